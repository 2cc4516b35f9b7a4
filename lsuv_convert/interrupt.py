"""Ctrl-C and SIGTERM that can't be lost.

The signal handlers raise KeyboardInterrupt as usual, and also record the signal. A library
that swallows the exception (a bare ``except:`` around an import, say) would otherwise let
the run finish and write its output; the record stops that at the last moment, before an
output file is renamed into place, and gives the run exit status 130.
"""

from __future__ import annotations

import contextlib
import signal

_received: list[int] = []


def check() -> None:
    """Raise KeyboardInterrupt if a signal arrived, even one whose exception got swallowed."""
    if _received:
        raise KeyboardInterrupt


def _handler(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled():
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered, inside this block."""
    _received.clear()
    # A signal the parent chose to ignore (nohup, `cmd &` in a script) stays ignored.
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()  # the record belongs to this block: later library calls must not see it
