"""Ctrl-C and SIGTERM that can't be lost, and a second one that can't be ignored.

The signal handlers raise KeyboardInterrupt as usual, and also record the signal. A library
that swallows the exception (a bare ``except:`` around an import, say) would otherwise let
the run finish and write its output; the record stops that at the last moment, before an
output file is renamed into place, and gives the run exit status 130.

Python runs signal handlers only between bytecodes, so a model stuck in a long native call
(a TorchScript loop) never sees them. A watchdog thread hears every signal through
:func:`signal.set_wakeup_fd`; at the second Ctrl-C, or a SIGTERM the main thread has not
answered within a few seconds, it removes the temporary files of unfinished writes and ends
the process at once (status 130): outputs are renamed into place only when complete, so
none is left half-written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time

_received: list[int] = []
_cleanups: list = []  # run before a hard stop (atomic.py registers the removal of unfinished writes)
TERM_GRACE_SECONDS = 3.0


def at_hard_stop(cleanup) -> None:
    """Run ``cleanup()`` if the process is ended at once (a second Ctrl-C)."""
    if cleanup not in _cleanups:
        _cleanups.append(cleanup)


def check() -> None:
    """Raise KeyboardInterrupt if a signal arrived, even one whose exception got swallowed."""
    if _received:
        raise KeyboardInterrupt


def _handler(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


def _stop_now() -> None:
    for cleanup in list(_cleanups):
        with contextlib.suppress(Exception):
            cleanup()
    with contextlib.suppress(OSError):
        os.write(2, b"lsuv-convert: error: interrupted again; stopped at once, no partial output was left\n")
    os._exit(130)


def _watch(reader: socket.socket, stop: threading.Event) -> None:
    interrupts = 0
    while not stop.is_set():
        try:
            data = reader.recv(64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum == signal.SIGINT:
                interrupts += 1
                if interrupts >= 2:
                    _stop_now()
            elif signum == signal.SIGTERM:
                handled_before = len(_received)
                deadline = time.monotonic() + TERM_GRACE_SECONDS
                while time.monotonic() < deadline and not stop.is_set():
                    if len(_received) > handled_before:
                        break  # the main thread took it: the run is winding down normally
                    time.sleep(0.05)
                else:
                    if not stop.is_set():
                        _stop_now()


@contextlib.contextmanager
def _watchdog():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):
        reader.close()
        writer.close()
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_watch, args=(reader, stop), name="lsuv-interrupt-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        signal.set_wakeup_fd(previous)
        writer.close()
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RDWR)
        thread.join(timeout=1)
        reader.close()


@contextlib.contextmanager
def handled():
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered, inside this block."""
    _received.clear()
    # A signal the parent chose to ignore (nohup, `cmd &` in a script) stays ignored.
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        with _watchdog():
            yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()  # the record belongs to this block: later library calls must not see it
