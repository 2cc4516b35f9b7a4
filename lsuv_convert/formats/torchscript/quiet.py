"""Silence torch's "torch.jit.* is deprecated" FutureWarnings: TorchScript is this format."""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def jit_deprecation_silenced():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield
