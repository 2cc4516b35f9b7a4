"""No path is both read and written: every file of a run, checked before any work starts.

The runner lists, for the whole run, what it will read (models with every file of a folder
model, companions its format names, --weights, --data files and every file of an image
folder, sidecar batches) and what it will write (outputs with every file of their format's
unit, logs, plots). Paths are compared by the file: resolved (``os.path.realpath``, so each
link counts as the file it points to) and, for files that exist, by (device, inode), so a
hard link to an input counts as the input too. Any write that hits a read, or two writes that
hit each other, is a usage error (exit 2) naming both roles, raised before the first model is
touched. ``--in-place`` allows exactly one overlap per model: its output over the model (or,
for Caffe, --weights).

What a run reads must be a regular file (or a folder of them): a FIFO, a device or a socket
is refused before anything reads or hashes it. What a run writes must be absent, a regular
file, or a folder this tool wrote: a device, a FIFO, a socket or a symbolic link is refused,
never replaced, and so is a folder that is not an output of ours (it may hold anything).
Folder walks never follow links to folders (no walk out of the folder, no loop).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError, shown

NAME_BYTES = 255  # the longest file name most file systems take
TEMP_MARK = ".lsuv-tmp"  # our private folders (see :mod:`.atomic`)
NEW_MARK = ".lsuv-new"  # a private folder being set up (renamed to TEMP_MARK once locked)
LOCK_MARK = ".lsuv-lock"  # an output's lock file


def is_temporary(path: Path | str) -> bool:
    """Whether ``path`` is (inside) one of our private folders, or one of our lock files."""
    return any(part.startswith(".") and part.endswith((TEMP_MARK, LOCK_MARK, NEW_MARK)) for part in Path(path).parts)


def kind_of(mode: int) -> str:
    """What a file is, in words (for refusals)."""
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return words
    return "a special file"




@dataclass(frozen=True)
class Role:
    path: Path
    what: str  # "the input model a.onnx", "the --log file of a.onnx", ...
    may_overwrite: tuple = ()  # identities of inputs this write is allowed to replace (--in-place)
    folder: bool = False  # written as a folder (a Hugging Face model's output), replaced as a unit
    ours: bool = False  # an existing folder here is an output of this tool (may be replaced)
    owner: tuple | None = None  # a read: the identity of the model (or folder) this file belongs to


@dataclass
class PathPlan:
    """What a run reads and writes."""

    reads: list[Role] = field(default_factory=list)
    writes: list[Role] = field(default_factory=list)
    # what check() indexed: the reads, and each write's identity (check_reads checks against them)
    _read_index: Any = field(default=None, repr=False, compare=False)
    _write_ids: list = field(default_factory=list, repr=False, compare=False)

    def read(self, path: Path | None, what: str) -> None:
        """A file or folder the run reads; each file of a folder counts as read too."""
        if path is None:
            return
        path = Path(path)
        self.reads.append(Role(path, what))
        if os.path.isdir(path):
            owner = identity(path)
            for rel, kind, file in walk_folder(path):
                if kind not in ("dir", "dir-link", "dangling-link"):
                    self.reads.append(Role(file, f"{rel} of {what}", owner=owner))

    def write(self, path: Path | None, what: str, may_overwrite=(), folder: bool = False, ours: bool = False) -> None:
        """``may_overwrite``: the inputs this one write may replace (--in-place: its own model);
        ``folder``: the write is a whole folder; ``ours``: an existing folder there is our output."""
        if path is not None:
            allowed = tuple(identity(Path(p)) for p in may_overwrite if p is not None)
            self.writes.append(Role(Path(path), what, allowed, folder, ours))

    def check(self) -> None:
        """Raise UsageError at the first problem, naming both roles (inputs first).

        Every role's identity is taken once and indexed by resolved path, by (device, inode) and
        by the folders it lies in, so a zoo of thousands of models checks in time linear in its
        files rather than comparing every write with every read."""
        for r in self.reads:
            _check_readable(r)
        self._read_index = _Index([(identity(r.path), r) for r in self.reads])
        self._write_ids = [(identity(w.path), w) for w in self.writes]
        for wid, w in self._write_ids:
            _check_write_against(wid, w, self._read_index)
            _check_writable(w)
        writes = _Index([])
        for wid, w in self._write_ids:
            for _, other in writes.same_as(wid):
                raise UsageError(f"{shown(w.path)} would be written twice: as {other.what} and as {w.what}; "
                                 "nothing was done (use --output-dir / a --log folder, or fewer models)")
            for _, outer in writes.folders_holding(wid, replaced_only=True):
                raise UsageError(f"{shown(w.path)} would be written as {w.what}, inside "
                                 f"{shown(outer.path)}, which is replaced as {outer.what}; nothing was done")
            if w.folder:
                for _, inner in writes.inside(wid):
                    raise UsageError(f"{shown(inner.path)} would be written as {inner.what}, inside "
                                     f"{shown(w.path)}, which is replaced as {w.what}; nothing was done")
            writes.add(wid, w)

    def check_reads(self, paths, what: str) -> None:
        """Files found only once a model is loaded (external data, a solver's net), checked
        against every write of the run before anything is written. Only the files the plan did
        not know are checked, against the writes as :meth:`check` indexed them, so each model of
        a zoo costs the files it adds, not the whole plan again."""
        if self._read_index is None:
            self.check()
        added = []
        for path in paths:
            if path is None:
                continue
            rid = identity(Path(path))
            if not self._read_index.same_as(rid):
                role = Role(Path(path), f"{what} {shown(path)}")
                _check_readable(role)
                self.reads.append(role)
                self._read_index.add(rid, role)
                added.append((rid, role))
        if added:
            fresh = _Index(added)
            for wid, w in self._write_ids:
                _check_write_against(wid, w, fresh)


def _check_write_against(wid: tuple, w: Role, reads: "_Index") -> None:
    """Raise UsageError if the write ``w`` (identity ``wid``) would land on, inside, or over one of
    ``reads``, unless it may overwrite that input (--in-place over its own model)."""
    def allowed(r: Role, rid: tuple) -> bool:
        return any(same_file(rid, a) for a in w.may_overwrite) or (
            r.owner is not None and any(same_file(r.owner, a) for a in w.may_overwrite))

    for rid, r in reads.same_as(wid):
        if not allowed(r, rid):
            hint = "" if "model" not in r.what else " (--in-place allows only the output over its own model)"
            raise UsageError(f"{shown(w.path)} would be written as {w.what}, but it is {r.what}; "
                             f"nothing was done{hint}")
    for rid, r in reads.folders_holding(wid):
        if not allowed(r, rid):
            raise UsageError(f"{shown(w.path)} would be written as {w.what}, inside {r.what}; nothing was done")
    if w.folder:
        for rid, r in reads.inside(wid):
            if not allowed(r, rid):
                raise UsageError(f"{shown(w.path)} would be replaced as {w.what}, but it holds {r.what}; "
                                 "nothing was done")


class _Index:
    """Roles by resolved path, by (device, inode), and by each folder above them: the lookups
    :meth:`PathPlan.check` makes, each in time independent of the number of roles."""

    def __init__(self, entries: list[tuple[tuple, Role]]):
        self.order: dict[int, int] = {}
        self.by_real: dict[str, list] = {}
        self.by_inode: dict[tuple, list] = {}
        self.by_parent: dict[str, list] = {}  # folder -> roles at or below it
        self.folders: dict[str, list] = {}  # resolved path of each folder role -> roles
        for rid, role in entries:
            self.add(rid, role)

    def add(self, rid: tuple, role: Role) -> None:
        entry = (rid, role)
        self.order[id(entry)] = len(self.order)
        self.by_real.setdefault(rid[0], []).append(entry)
        if rid[1] is not None:
            self.by_inode.setdefault(rid[1], []).append(entry)
        for parent in _folders_above(rid[0]):
            self.by_parent.setdefault(parent, []).append(entry)
        if os.path.isdir(rid[0]) or role.folder:
            self.folders.setdefault(rid[0], []).append(entry)

    def _sorted(self, entries) -> list:
        unique = {id(e): e for e in entries}
        return sorted(unique.values(), key=lambda e: self.order[id(e)])

    def same_as(self, rid: tuple) -> list:
        found = list(self.by_real.get(rid[0], ()))
        if rid[1] is not None:
            found += self.by_inode.get(rid[1], ())
        return self._sorted(found)

    def folders_holding(self, rid: tuple, replaced_only: bool = False) -> list:
        """Folder roles ``rid`` lies strictly inside (``replaced_only``: folders written as a unit)."""
        found = [e for parent in _folders_above(rid[0]) for e in self.folders.get(parent, ())
                 if not replaced_only or e[1].folder]
        return self._sorted(e for e in found if e[0][0] != rid[0])

    def inside(self, rid: tuple) -> list:
        """Roles strictly inside the folder ``rid``."""
        return self._sorted(e for e in self.by_parent.get(rid[0], ()) if e[0][0] != rid[0])


def _folders_above(real: str) -> list[str]:
    """The folders a resolved path lies in, innermost first."""
    out, current = [], os.path.dirname(real)
    while current and current not in out:
        out.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return out


def _check_readable(r: Role) -> None:
    try:
        st = os.stat(r.path)
    except OSError:
        return  # missing: the reader names it in its own words
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"{shown(r.path)} ({r.what}) is {kind_of(st.st_mode)}, not a regular file; "
                         "nothing was read")


def _check_writable(w: Role) -> None:
    path = w.path
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{shown(path)} would be written as {w.what}, but it is a symbolic link; refusing to "
                             "replace it (name the file it points to, or remove the link)")
        if w.folder and not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{shown(path)} would be written as {w.what}, a folder, but it is "
                             f"{kind_of(st.st_mode)}; nothing was done")
        if not w.folder and stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{shown(path)} would be written as {w.what}, but it is a folder")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise UsageError(f"{shown(path)} would be written as {w.what}, but it is {kind_of(st.st_mode)}; "
                             "refusing to replace it")
        if w.folder and not (w.ours or w.may_overwrite and any(same_file(identity(path), a) for a in w.may_overwrite)):
            if any(os.scandir(path)):
                raise UsageError(f"{shown(path)} would be replaced as {w.what}, but it is a folder lsuv-convert did "
                                 "not write; refusing to replace it (remove it, or choose another output)")
        for rel, kind, _ in walk_folder(path) if w.folder and stat.S_ISDIR(st.st_mode) else ():
            if kind not in ("dir", "file", "dir-link", "dangling-link"):
                raise UsageError(f"{shown(path)} would be replaced as {w.what}, but {shown(rel)} in it is {kind}; "
                                 "nothing was done")
    if len(os.fsencode(Path(path).name)) > NAME_BYTES:
        raise UsageError(f"{shown(path)} can't be written as {w.what}: its name is longer than {NAME_BYTES} bytes, "
                         "more than file systems take; nothing was done")
    blocking = next((p for p in Path(path).parents if os.path.exists(p) and not os.path.isdir(p)), None)
    if blocking is not None:
        raise UsageError(f"{shown(path)} can't be written as {w.what}: {shown(blocking)} is a file, not a folder")


def walk_folder(folder: Path):
    """``(relative path, kind, path)`` for everything below ``folder``, sorted, never following a
    link to a folder. ``kind``: "dir", "file" (a regular file, or a link to one), "dir-link",
    "dangling-link", or what a special file is ("a FIFO (named pipe)", ...)."""
    folder = Path(folder)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(folder / rel_dir), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if is_temporary(entry.name):
                continue  # a private folder of a write in progress: not part of the folder
            path = Path(entry.path)
            try:
                st = os.stat(path)
            except OSError:
                yield rel, "dangling-link", path
                continue
            if entry.is_symlink():
                yield rel, "dir-link" if stat.S_ISDIR(st.st_mode) else ("file" if stat.S_ISREG(st.st_mode)
                                                                          else kind_of(st.st_mode)), path
            elif stat.S_ISDIR(st.st_mode):
                yield rel, "dir", path
                stack.append(rel)
            else:
                yield rel, "file" if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode), path


def identity(path: Path) -> tuple:
    """(resolved path, (device, inode) when the file exists): equal for links to one file."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return (real, inode)


def same_file(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])
