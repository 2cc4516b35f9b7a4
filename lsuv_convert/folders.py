"""Folder outputs (a Hugging Face model): copied without following links out, replaced crash-safe.

:func:`copy_folder` copies a model folder's files into the new output: regular files as they
are, a link to a regular file as that file's content (the runner has checked that file as an
input); links to folders and dangling links are copied as the same links, never followed (no
walk out of the folder, no loop), and anything that is not a regular file (a FIFO, a device)
stops the copy.

:func:`atomic_folder` builds the new folder in a private folder beside its destination and
replaces the destination by the journal protocol of :mod:`lsuv_convert.atomic`: the previous
folder is renamed into the private folder, the new one renamed onto the destination, under
the destination's lock. A run killed between those two renames leaves the previous folder in
the private folder with a journal; the next run in that folder puts it back before anything
else (:func:`lsuv_convert.atomic.clean_stale`). Two runs writing one folder take turns at the
swap: each leaves a complete folder, the last one's stays.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from . import atomic, interrupt
from .errors import OutputError
from .paths import walk_folder


@contextlib.contextmanager
def atomic_folder(dest: Path | str):
    """Yield an empty folder to fill; on success it replaces ``dest`` (a folder or nothing)."""
    dest = Path(dest)
    private = None
    try:
        atomic.make_folder(dest.parent, dest)
        atomic.clean_stale(dest.parent)
        private = atomic.new_private(dest.parent, dest.name)
        new = private / "new"
        new.mkdir()
    except OSError as exc:
        if private is not None:
            atomic.discard_private(private)
        raise OutputError(f"cannot write in {dest.parent}: {exc.strerror or exc}", path=dest) from exc
    try:
        yield new
        interrupt.check()
        sync_tree(new)
        with atomic.output_lock(dest):
            swap_in(private, new, dest)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError("disk full while writing; nothing was written", path=dest) from exc
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=dest) from exc
    finally:
        atomic.discard_private(private)


def swap_in(private: Path, new: Path, dest: Path, *, between=None) -> None:
    """Steps 2-5 of the protocol for one folder; ``between(step)`` is called after each step
    (the fault-injection tests stop the process there)."""
    step = between or (lambda name: None)
    if os.path.lexists(dest) and not (dest.is_dir() and not dest.is_symlink()):
        raise OutputError("exists and is not a folder; refusing to replace it", path=dest)
    atomic.write_journal(private, [{"dest": dest.name, "new": new.name, "old": "old"}])
    step("journal")
    if os.path.lexists(dest):
        os.rename(dest, private / "old")
        step("old moved")
    os.rename(new, dest)
    atomic.sync_folder(dest.parent)
    step("new moved")
    atomic.finish_journal(private)
    step("journal removed")


def folder_links(source: Path) -> list[str]:
    """The links to folders and dangling links in ``source``: what :func:`copy_folder` copies as
    links, never following them."""
    return [rel for rel, kind, _ in walk_folder(source) if kind in ("dir-link", "dangling-link")]


def copy_folder(source: Path, dest: Path, skip: set[str] = frozenset()) -> list[str]:
    """Copy ``source``'s files into the existing folder ``dest`` (``skip``: top-level names left
    out); links to folders and dangling links are copied as the same links, never followed:
    returns their names."""
    left_out = []
    for rel, kind, path in walk_folder(source):
        if rel.split("/", 1)[0] in skip:
            continue
        target = dest / rel
        if kind == "dir":
            target.mkdir(exist_ok=True)
        elif kind == "file":
            shutil.copyfile(path, target)
            shutil.copymode(path, target)
        elif kind in ("dir-link", "dangling-link"):
            os.symlink(os.readlink(path), target)
            left_out.append(rel)
        else:
            raise OutputError(f"{rel} in the model folder is {kind}, not a regular file; nothing was written",
                              path=source)
    return left_out


def sync_tree(folder: Path) -> None:
    """fsync every file and folder below ``folder`` (the new output, before it goes in place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        atomic.sync_folder(Path(root))
