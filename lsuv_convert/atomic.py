"""Atomic outputs: written aside, synced, renamed into place; a journal for what one rename can't do.

On any failure (exception, KeyboardInterrupt, SIGTERM turned into an exception by the CLI)
the temporary files are removed and the destination is left untouched. Several files that
belong together (an ONNX model and its external ``.data`` file) are replaced as one unit
(:func:`atomic_paths`); a folder (a Hugging Face model) is replaced by
:func:`lsuv_convert.folders.atomic_folder`. Both follow the journal protocol below.

**Private folders.** Every write works in a private hidden folder ``.NAME.XXXXXXXX.lsuv-tmp``
beside its destination (``NAME`` shortened so the name stays within 255 bytes): hidden and
marked, so no folder walk or glob takes it for a model. Its live owner holds an exclusive
``flock`` on the folder's ``.owner`` file for as long as it runs; the kernel drops the lock
when the process dies, however it dies. A private folder whose lock can be taken belongs to
no live run: it is *stale*, and the next run that writes, or starts, in that folder settles
it and removes it (:func:`clean_stale`). Where locks are not supported (some NFS set-ups
answer ENOLCK), a private folder counts as stale only after :data:`STALE_SECONDS`.

**The journal** (``journal.json`` in the private folder, written and synced before the first
change at a destination) lists each destination with ``new`` (its new file or folder, in the
private folder) and ``old`` (where its previous content is kept, in the private folder).
Replacing follows these steps, under the destination's lock (:func:`output_lock`):

1. every new file / folder is complete and synced in the private folder;
2. the journal is written and synced;
3. for a file: its previous version is hard-linked (or copied) to ``old``;
   for a folder: the previous folder is renamed to ``old`` (the destination is now absent);
4. each ``new`` is renamed onto its destination;
5. the journal is removed, then the private folder.

Settling a stale private folder (the run died somewhere in 1-5) restores the state before
the run: if every ``new`` is gone (step 4 completed) the replace is kept; otherwise each
destination already replaced gets its ``old`` back (or is removed when it had none), and a
folder destination that is absent gets its ``old`` back. So at every instant each
destination is intact at its path (the old or the new version), except a folder between
steps 3 and 4, which the next run restores before doing anything else; a model is never a
destination unless ``--in-place`` names it, and then it is the folder of this protocol.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from . import interrupt
from .errors import OutputError
from .paths import LOCK_MARK, NAME_BYTES, NEW_MARK, TEMP_MARK, kind_of

OWNER = ".owner"
JOURNAL = "journal.json"
STALE_SECONDS = 6 * 3600  # where locks don't work: a private folder this old belongs to a killed run

_active: dict[Path, int] = {}  # private folders of writes in progress -> their owner lock's fd


def remove_active() -> None:
    """Settle and remove the private folders of unfinished writes (the process ends at once)."""
    for private in list(_active):
        discard_private(private)


interrupt.at_hard_stop(remove_active)


def short_name(name: str, room: int) -> str:
    """``name`` cut to at most ``room`` bytes (UTF-8) with a hash of the whole, when it is longer."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return raw[: max(0, room - 13)].decode("utf-8", "ignore") + "~" + digest


# ---- private folders -------------------------------------------------------------------------------
def new_private(folder: Path, dest_name: str) -> Path:
    """A fresh private folder beside ``folder/dest_name``, locked by this process.

    It is made under a name no cleaner looks at (``...lsuv-new``) and renamed to its
    ``.lsuv-tmp`` name only once its owner lock is held, so another run's cleanup never
    takes a folder being set up for a stale one."""
    prefix = "." + short_name(dest_name, NAME_BYTES - 1 - 1 - 8 - len(TEMP_MARK)) + "."
    making = Path(tempfile.mkdtemp(prefix=prefix, suffix=NEW_MARK, dir=folder))
    private = making.with_name(making.name[: -len(NEW_MARK)] + TEMP_MARK)
    fd = -1
    try:
        fd = os.open(making / OWNER, os.O_RDWR | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # no locks here: staleness falls back to age
            _flock(fd, blocking=False)
        os.rename(making, private)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(making, ignore_errors=True)
        raise
    _active[private] = fd
    return private


def discard_private(private: Path) -> None:
    """Settle ``private`` by its journal (see the module docstring), then remove it."""
    try:
        settle(private)
    finally:
        shutil.rmtree(private, ignore_errors=True)
        fd = _active.pop(private, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def write_journal(private: Path, entries: list[dict]) -> None:
    """Step 2: ``entries`` = [{"dest": name in the parent folder, "new": ..., "old": ...}], synced."""
    tmp = private / (JOURNAL + ".part")
    with open(tmp, "w") as fh:
        json.dump({"entries": entries}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, private / JOURNAL)
    sync_folder(private)


def finish_journal(private: Path) -> None:
    """Step 5: the replace is complete; nothing is to be restored from now on."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(private / JOURNAL)
    sync_folder(private.parent)


def settle(private: Path) -> None:
    """Restore what a replace interrupted in ``private`` left (see the module docstring)."""
    try:
        entries = json.loads((private / JOURNAL).read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no journal: nothing outside the private folder was touched
    parent = private.parent
    moved = [e for e in entries if not os.path.lexists(private / e["new"])]
    complete = len(moved) == len(entries)
    for k, entry in enumerate(entries):
        dest = parent / entry["dest"]
        old = private / entry["old"] if entry.get("old") else None
        has_old = old is not None and os.path.lexists(old)
        if entry in moved and not complete:  # replaced, but not the whole unit: undo
            if os.path.lexists(dest):
                _move_aside(dest, private / f"undone-{k}")
            if has_old:
                os.rename(old, dest)
        elif has_old and not os.path.lexists(dest):  # a folder moved away and not replaced: back
            os.rename(old, dest)
    finish_journal(private)


def journal_dests(private: Path) -> list[Path]:
    """The destinations a private folder's journal names (none without a journal)."""
    try:
        entries = json.loads((private / JOURNAL).read_text())["entries"]
        return [private.parent / e["dest"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _move_aside(path: Path, aside: Path) -> None:
    os.rename(path, aside)


def clean_stale(folder: Path, max_age: float = STALE_SECONDS) -> None:
    """Settle and remove every stale private folder and lock file in ``folder`` (killed runs)."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        try:
            if not name.startswith("."):
                continue
            if name.endswith(TEMP_MARK) and entry.is_dir(follow_symlinks=False):
                _clean_private(Path(entry.path), now - entry.stat(follow_symlinks=False).st_mtime > max_age)
            elif name.endswith(LOCK_MARK) and entry.is_file(follow_symlinks=False):
                _clean_lock(Path(entry.path))
            elif name.endswith(NEW_MARK) and entry.is_dir(follow_symlinks=False):
                if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                    shutil.rmtree(entry.path, ignore_errors=True)  # a run killed while setting one up
            elif name.endswith(TEMP_MARK) and entry.is_file(follow_symlinks=False):
                if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                    os.unlink(entry.path)
            elif _LEGACY.match(name) and entry.is_dir(follow_symlinks=False):
                if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                    _clean_legacy(Path(entry.path))
        except OSError:
            continue


# what versions before the journal left: ``.NAME.XXXXXXXX.tmp`` (a folder being built) and
# ``.NAME.XXXXXXXX.old/NAME`` (the previous folder, moved aside for a swap that may have been cut)
_LEGACY = re.compile(r"^\.(?P<dest>.+)\.[a-z0-9_]{8}\.(?P<kind>tmp|old)$")


def _clean_legacy(path: Path) -> None:
    found = _LEGACY.match(path.name)
    kept = path / found["dest"]
    if found["kind"] == "old" and kept.is_dir() and not os.path.lexists(path.parent / found["dest"]):
        os.rename(kept, path.parent / found["dest"])  # the swap was cut: the previous folder goes back
    shutil.rmtree(path, ignore_errors=True)


def _clean_private(private: Path, old_enough: bool) -> None:
    if private in _active:
        return
    try:
        fd = os.open(private / OWNER, os.O_RDWR)
    except FileNotFoundError:
        if old_enough:  # an owner file never came to be: a run killed within mkdtemp
            shutil.rmtree(private, ignore_errors=True)
        return
    try:
        try:
            _flock(fd, blocking=False)
        except BlockingIOError:
            return  # a live run owns it
        except OSError:
            if not old_enough:
                return  # no locks here and young: it may be live
        with contextlib.ExitStack() as locks:  # we hold its owner lock: no other run settles it meanwhile
            for dest in journal_dests(private):  # and no live run replaces its destinations meanwhile
                locks.enter_context(output_lock(dest))
            settle(private)
        shutil.rmtree(private, ignore_errors=True)
    finally:
        os.close(fd)


def _clean_lock(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDWR)
        try:
            _flock(fd, blocking=False)
            if _same_inode(fd, path):
                os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


# ---- the destination's lock -------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(dest: Path):
    """Hold ``.NAME.lsuv-lock`` beside ``dest`` (flock, waiting for another run's replace to end).

    The file is removed on release; a waiter that then holds a removed file tries again, so
    two runs never both hold it. Where flock is not supported the replace runs unlocked."""
    dest = Path(dest)
    path = dest.parent / ("." + short_name(dest.name, NAME_BYTES - 1 - len(LOCK_MARK)) + LOCK_MARK)
    fd = -1
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _flock(fd, blocking=True)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
                os.close(fd)
                raise
            break  # no locking on this file system
        if _same_inode(fd, path):
            break
        os.close(fd)  # removed by the run before us: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if _same_inode(fd, path):
                os.unlink(path)
        os.close(fd)


def _flock(fd: int, *, blocking: bool) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))


def _same_inode(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so the renames in it survive a power cut (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- files -----------------------------------------------------------------------------------------
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

    The renames happen only after every file is written and synced, under the journal
    protocol (module docstring), so the set on disk is all old or all new, even across a crash.
    """
    dests = [Path(d) for d in dests]
    privates: dict[Path, Path] = {}
    try:
        for dest in dests:
            check_replaceable(dest)
            folder = dest.parent
            if folder not in privates:
                make_folder(folder, dest)
                clean_stale(folder)
                privates[folder] = new_private(folder, dest.name)
    except OSError as exc:
        _discard_all(privates.values())
        raise OutputError(f"cannot write in {dest.parent}: {exc.strerror or exc}", path=dest) from exc
    except BaseException:
        _discard_all(privates.values())
        raise
    tmps = [privates[d.parent] / d.name for d in dests]
    try:
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~umask())
        interrupt.check()  # a Ctrl-C whose exception a library swallowed still stops the write
        if len(dests) == 1:
            check_replaceable(dests[0])
            os.replace(tmps[0], dests[0])
            sync_folder(dests[0].parent)
        else:
            with contextlib.ExitStack() as locks:
                for dest in dests:
                    locks.enter_context(output_lock(dest))
                _replace_files(tmps, dests, privates)
    except OSError as exc:
        dest = dests[0]
        if exc.errno == errno.ENOSPC:
            raise OutputError("disk full while writing; nothing was written", path=dest) from exc
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=dest) from exc
    finally:
        _discard_all(privates.values())


def _replace_files(tmps: list[Path], dests: list[Path], privates: dict[Path, Path]) -> None:
    """Steps 2-5 of the protocol for a unit of files (one journal per folder involved)."""
    plans: dict[Path, list[dict]] = {}
    for k, (tmp, dest) in enumerate(zip(tmps, dests)):
        check_replaceable(dest)
        plans.setdefault(dest.parent, []).append({"dest": dest.name, "new": tmp.name, "old": f"old-{k}"})
    for folder, entries in plans.items():
        write_journal(privates[folder], entries)
    try:
        for k, dest in enumerate(dests):
            if os.path.lexists(dest):
                backup = privates[dest.parent] / f"old-{k}"
                try:
                    os.link(dest, backup)
                except OSError:  # no hard links here: a copy keeps the old file as well
                    shutil.copy2(dest, backup)
        for tmp, dest in zip(tmps, dests):
            os.replace(tmp, dest)
    except BaseException:
        for private in privates.values():
            settle(private)  # back to the old set
        raise
    for private in privates.values():
        finish_journal(private)


def check_replaceable(dest: Path) -> None:
    """An existing destination must be a regular file we may replace: never a device, a FIFO,
    a socket or a symbolic link (replacing those would break what they stand for)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    except OSError:
        return  # the rename will say what is wrong
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"exists as {kind_of(st.st_mode)}; refusing to replace it", path=dest)


def make_folder(folder: Path, dest: Path) -> None:
    """Create the destination folder; a path component that is a file is named as such."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write here: {parent} is a file, not a folder", path=dest)
    folder.mkdir(parents=True, exist_ok=True)


def write_bytes_atomic(dest: Path | str, data: bytes) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _discard_all(privates) -> None:
    for private in list(privates):
        discard_private(private)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
