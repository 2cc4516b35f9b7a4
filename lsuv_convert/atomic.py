"""Atomic output files: write to a temporary file beside the destination, fsync, rename.

On any failure (exception, KeyboardInterrupt, SIGTERM turned into an exception by the CLI)
the temporary file is removed and the destination is left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from . import interrupt
from .errors import OutputError


@contextlib.contextmanager
def atomic_path(dest: Path | str):
    """Yield a temporary path in ``dest``'s folder; on success it replaces ``dest``.

    The temporary file carries ``dest``'s own name inside a private hidden folder, so
    writers that embed the file name (``torch.jit.save`` names its archive after it) write
    exactly what they would write to ``dest``, which keeps outputs byte-identical.
    """
    dest = Path(dest)
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror or exc}", path=dest) from exc
    tmp_path = private / dest.name
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        interrupt.check()  # a Ctrl-C whose exception a library swallowed still stops the write
        os.replace(tmp_path, dest)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError("disk full while writing; nothing was written", path=dest) from exc
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=dest) from exc
    finally:
        _remove(tmp_path)
        with contextlib.suppress(OSError):
            private.rmdir()


def write_bytes_atomic(dest: Path | str, data: bytes) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
