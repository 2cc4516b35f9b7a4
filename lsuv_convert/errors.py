"""Exception types the CLI turns into one line on stderr.

Every *expected* failure (bad file, bad data, bad option, a conversion we can't trust)
is raised as an :class:`LsuvError` subclass; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class LsuvError(Exception):
    """Base class of expected failures; ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, *, path: object | None = None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{shown(self.path)}: {msg}" if self.path is not None else msg


class UsageError(LsuvError):
    """The command line asks for something unsafe or contradictory (paths that collide, a bad
    option value); found before any work starts. Exit status 2, like click's own usage errors."""

    exit_code = 2


class ModelFormatError(LsuvError):
    """The model file is unreadable, truncated, of an unknown format or uses an unsupported op."""


class ConversionError(LsuvError):
    """The model loaded but its torch graph can't be trusted (e.g. fails the fidelity gate)."""


class DataError(LsuvError):
    """The data batch is missing, unreadable, or doesn't fit the model's inputs."""


class OutputError(LsuvError):
    """The output can't be written where asked (same as input, read-only folder, disk full)."""


class DeviceError(LsuvError):
    """The requested device is unknown or absent."""


class UnconvergedError(LsuvError):
    """Some layer could not be scaled to the target variance (zero or non-finite output)."""

    exit_code = 3


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(name: object) -> str:
    """A file name (or any text from outside) as printed: control characters escaped
    (``\\n``, ``\\x1b``), so no name can break a line, forge another, or drive the terminal."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()) & 0xFF:02x}"), str(name))


def first_line(exc: BaseException | str) -> str:
    """The line of an exception's text that says what went wrong, for a one-line error.

    Library errors often carry a traceback of their own (TorchScript's interpreter, onnxruntime):
    the last ``SomeError: message`` line is the cause; otherwise the first non-empty line is.
    """
    text = exc if isinstance(exc, str) else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        found = re.match(r"^[A-Za-z_.]*(?:Error|Exception):\s*(.+)$", line)
        if found and len(lines) > 1:
            return found.group(1)
    if lines:
        return lines[0]
    return type(exc).__name__ if not isinstance(exc, str) else "unknown error"


def first_few(items, n: int = 5, sep: str = ", ") -> str:
    """The first ``n`` of ``items`` joined, and how many more there are: messages name a few
    examples of a long list ("a, b, c and 12 more") rather than all of it."""
    items = [str(i) for i in items]
    return sep.join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
