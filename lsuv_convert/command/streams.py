"""Model code never writes on our stdout: it carries --json lines only.

A TorchScript ``print`` (``prim::Print``), a library's chatter or a C++ ``std::cout`` goes
to file descriptor 1, below Python's ``sys.stdout``; redirecting only ``sys.stdout`` would
miss it. While a model is loaded and run, descriptor 1 points at stderr, and C's stdio
buffers are flushed before it is pointed back, so nothing printed then lands among the
JSON lines later.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def model_stdout_to_stderr():
    _flush_all()
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1 at all: nothing to protect
        yield
        return
    old_stdout = sys.stdout
    try:
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        yield
    finally:
        _flush_all()
        sys.stdout = old_stdout
        os.dup2(saved, 1)
        os.close(saved)


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C stdio (std::cout is synced with it)
