"""Atomic output files: write to a temporary file beside the destination, fsync, rename.

On any failure (exception, KeyboardInterrupt, SIGTERM turned into an exception by the CLI)
the temporary file is removed and the destination is left untouched. Several files that
belong together (an ONNX model and its external ``.data`` file) are replaced as one unit
(:func:`atomic_paths`): the old set stays intact until every new file is complete.

Temporary files live in a private hidden folder ``.NAME.XXXX.lsuv-tmp`` beside the
destination: hidden and marked, so that no folder walk or glob takes them for models, and
recognisable, so that ones left by a killed run are cleaned up later (:func:`clean_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

from . import interrupt
from .errors import OutputError

TEMP_MARK = ".lsuv-tmp"
STALE_SECONDS = 6 * 3600  # a temporary folder this old belongs to a run that was killed

_active: set[Path] = set()  # temporary folders of writes in progress (removed by a hard stop too)


def remove_active() -> None:
    """Remove the temporary folders of unfinished writes (the process is about to end at once)."""
    _remove_all(list(_active))


interrupt.at_hard_stop(remove_active)


def is_temporary(path: Path | str) -> bool:
    """Whether ``path`` is (inside) one of our temporary folders."""
    return any(part.startswith(".") and part.endswith(TEMP_MARK) for part in Path(path).parts)


@contextlib.contextmanager
def atomic_path(dest: Path | str):
    """Yield a temporary path in ``dest``'s folder; on success it replaces ``dest``.

    The temporary file carries ``dest``'s own name inside a private hidden folder, so
    writers that embed the file name (``torch.jit.save`` names its archive after it) write
    exactly what they would write to ``dest``, which keeps outputs byte-identical.
    """
    with atomic_paths([dest]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(dests: list[Path | str]):
    """Yield one temporary path per destination; on success all replace their destinations.

    The renames happen only after every file is written and synced; if one of them fails,
    the destinations already replaced get their old files back, so the set on disk is
    either all old or all new.
    """
    dests = [Path(d) for d in dests]
    privates: dict[Path, Path] = {}
    try:
        for dest in dests:
            folder = dest.parent
            if folder not in privates:
                _make_folder(folder, dest)
                clean_stale(folder)
                privates[folder] = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TEMP_MARK, dir=folder))
                _active.add(privates[folder])
    except OSError as exc:
        _remove_all(privates.values())
        raise OutputError(f"cannot write in {dest.parent}: {exc.strerror or exc}", path=dest) from exc
    except BaseException:
        _remove_all(privates.values())
        raise
    tmps = [privates[d.parent] / d.name for d in dests]
    try:
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        interrupt.check()  # a Ctrl-C whose exception a library swallowed still stops the write
        _replace_all(tmps, dests, privates)
    except OSError as exc:
        dest = dests[0]
        if exc.errno == errno.ENOSPC:
            raise OutputError("disk full while writing; nothing was written", path=dest) from exc
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=dest) from exc
    finally:
        _remove_all(privates.values())


def _make_folder(folder: Path, dest: Path) -> None:
    """Create the destination folder; a path component that is a file is named as such."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write here: {parent} is a file, not a folder", path=dest)
    folder.mkdir(parents=True, exist_ok=True)


def _replace_all(tmps: list[Path], dests: list[Path], privates: dict[Path, Path]) -> None:
    if len(dests) == 1:
        os.replace(tmps[0], dests[0])
        return
    backups: list[tuple[Path, Path]] = []  # (dest, its old file kept in our private folder)
    done: list[Path] = []
    try:
        for dest in dests:
            if dest.exists():
                backup = privates[dest.parent] / f"old-{len(backups)}"
                try:
                    os.link(dest, backup)
                except OSError:  # no hard links here: a copy keeps the old file as well
                    shutil.copy2(dest, backup)
                backups.append((dest, backup))
        for tmp, dest in zip(tmps, dests):
            os.replace(tmp, dest)
            done.append(dest)
    except BaseException:
        restored = {dest for dest, _ in backups}
        for dest, backup in backups:
            with contextlib.suppress(OSError):
                os.replace(backup, dest)
        for dest in done:
            if dest not in restored:
                _remove(dest)
        raise


def clean_stale(folder: Path, max_age: float = STALE_SECONDS) -> None:
    """Remove our temporary folders in ``folder`` left by runs killed more than ``max_age`` ago.

    A younger one may belong to a run still going on, so it is left alone (it is hidden and
    marked, so nothing takes it for a model meanwhile)."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMP_MARK)):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def write_bytes_atomic(dest: Path | str, data: bytes) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _remove_all(folders) -> None:
    for folder in list(folders):
        shutil.rmtree(folder, ignore_errors=True)
        _active.discard(folder)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
