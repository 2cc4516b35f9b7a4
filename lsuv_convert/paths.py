"""No path is both read and written: every path of a run, checked before any work starts.

The runner lists, for the whole run, what it will read (models, --weights, --data files and
image folders, sidecar batches) and what it will write (outputs with every file of their
format's unit, logs, plots). Paths are compared resolved (``os.path.realpath``) and, for
files that exist, by (device, inode), so a symlink or a hard link to an input counts as the
input. Any write that hits a read, or two writes that hit each other, is a usage error
(exit 2) naming both roles, raised before the first model is touched. ``--in-place`` allows
exactly one overlap per model: its output over the model file (or, for Caffe, --weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class Role:
    path: Path
    what: str  # "the input model a.onnx", "the --log file of a.onnx", ...
    may_overwrite: tuple = ()  # identities of inputs this write is allowed to replace (--in-place)
    folder: bool = False  # written as a folder (a Hugging Face model's output), replaced as a unit


@dataclass
class PathPlan:
    """What a run reads and writes."""

    reads: list[Role] = field(default_factory=list)
    writes: list[Role] = field(default_factory=list)

    def read(self, path: Path | None, what: str) -> None:
        if path is not None:
            self.reads.append(Role(Path(path), what))

    def write(self, path: Path | None, what: str, may_overwrite=(), folder: bool = False) -> None:
        """``may_overwrite``: the inputs this one write may replace (--in-place: its own model);
        ``folder``: the write is a whole folder."""
        if path is not None:
            allowed = tuple(identity(Path(p)) for p in may_overwrite if p is not None)
            self.writes.append(Role(Path(path), what, allowed, folder))

    def check(self) -> None:
        """Raise UsageError at the first collision, naming both roles (inputs first)."""
        read_ids = [(identity(r.path), r) for r in self.reads]
        write_ids = [(identity(w.path), w) for w in self.writes]
        for wid, w in write_ids:
            if w.folder and os.path.exists(w.path) and not os.path.isdir(w.path):
                raise UsageError(f"{w.path} would be written as {w.what}, a folder, but it is a file")
            if not w.folder and os.path.isdir(w.path):
                raise UsageError(f"{w.path} would be written as {w.what}, but it is a folder")
            blocking = next((p for p in Path(w.path).parents if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                raise UsageError(f"{w.path} can't be written as {w.what}: {blocking} is a file, not a folder")
            for rid, r in read_ids:
                if same_file(wid, rid):
                    if not any(same_file(rid, a) for a in w.may_overwrite):
                        hint = "" if "model" not in r.what else " (--in-place allows only the output over its own model)"
                        raise UsageError(f"{w.path} would be written as {w.what}, but it is {r.what}; "
                                         f"nothing was done{hint}")
                elif r.path.is_dir() and _inside(w.path, r.path):
                    raise UsageError(f"{w.path} would be written as {w.what}, inside {r.what}; nothing was done")
                elif w.folder and _inside(r.path, w.path):
                    raise UsageError(f"{w.path} would be replaced as {w.what}, but it holds {r.what}; nothing was done")
        for k, (wid, w) in enumerate(write_ids):
            for oid, other in write_ids[:k]:
                if same_file(wid, oid):
                    raise UsageError(f"{w.path} would be written twice: as {other.what} and as {w.what}; "
                                     "nothing was done (use --output-dir / a --log folder, or fewer models)")
                for inner, outer in ((w, other), (other, w)):
                    if outer.folder and _inside(inner.path, outer.path):
                        raise UsageError(f"{inner.path} would be written as {inner.what}, inside {outer.path}, "
                                         f"which is replaced as {outer.what}; nothing was done")


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


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False
