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

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(dest: Path | str):
    """Yield a temporary path in ``dest``'s folder; on success it replaces ``dest``."""
    dest = Path(dest)
    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror or exc}", path=dest) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644 & ~_umask())
        os.replace(tmp_path, dest)
    except OSError as exc:
        _remove(tmp_path)
        if exc.errno == errno.ENOSPC:
            raise OutputError("disk full while writing; nothing was written", path=dest) from exc
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=dest) from exc
    except BaseException:
        _remove(tmp_path)
        raise


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
