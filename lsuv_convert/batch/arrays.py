"""Arrays as a sample: one ``.npy`` per single-input model, or ``.npz`` archives holding one array
per input (named like the inputs); several files are one sample, concatenated along the batch
axis (axis 0) in order.

Every file's header is read first: a header declaring more bytes than the file holds is refused,
and the whole sample (after ``--samples``) must fit the memory budget before any data is read.
The parts are then copied one by one into the sample (``.npy`` parts through a memory map, so
only the rows used are read). Nothing here unpickles: arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..formats.model_graph import InputSpec, required_count

MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


@dataclass
class Part:
    """One file of the sample as its headers declare it: {member name: (shape, dtype)}; a .npy's
    single array is the member ``""``."""

    path: Path
    members: dict[str, tuple[tuple[int, ...], np.dtype]]


def read_arrays(files: list[Path], specs: list[InputSpec], samples: int | None,
                where) -> tuple[list[np.ndarray], list[str], str, list[Path]]:
    """(arrays, the inputs they feed, a description, the files whose rows are in the sample) for the
    sample in ``files``."""
    parts = [_declared(f) for f in files]
    members, names = _fed_members(parts[0], specs)
    for part in parts[1:]:
        missing = [m for m in members if m not in part.members]
        if missing:
            raise DataError(f"holds no array {missing[0]!r}, which {parts[0].path} has (every part of a sample "
                            "holds the same arrays)", path=part.path)
    if len(parts) == 1 and samples is None:
        arrays = _load_whole(parts[0], members)
        return arrays, names, f"{files[0]} {', '.join(str(tuple(a.shape)) for a in arrays)}", list(files)
    rows = [_rows(part, members) for part in parts]
    for part in parts[1:]:
        for m in members:
            _check_trailing(part, parts[0], m)
    total = sum(rows)
    take = total if samples is None else min(samples, total)
    shapes = {m: (take, *parts[0].members[m][0][1:]) for m in members}
    dtypes = {m: np.result_type(*(p.members[m][1] for p in parts)) for m in members}
    _check_sample(shapes, dtypes, parts, take, where)
    out = {m: np.empty(shapes[m], dtype=dtypes[m]) for m in members}
    done = 0
    for part, count in zip(parts, rows):
        if done >= take:
            break
        count = min(count, take - done)
        for m, rows_of_part in _load_rows(part, members, count).items():
            out[m][done:done + count] = rows_of_part
        done += count
    used = sum(1 for _ in _prefix(rows, take))
    arrays = [out[m] for m in members]
    desc = (f"{take} samples from {used} file(s) ({', '.join(str(tuple(a.shape)) for a in arrays)})"
            + (f" of {total}" if take < total else ""))
    return arrays, names, desc, files[:used]


def _prefix(rows: list[int], take: int):
    """The parts a sample of ``take`` rows reads."""
    done = 0
    for count in rows:
        if done >= take:
            return
        yield count
        done += count


def _declared(path: Path) -> Part:
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as fh:
            if fh.read(len(MAGIC[suffix])) != MAGIC[suffix]:
                raise DataError(f"not a {suffix} file (numpy's header is missing)", path=path)
    except OSError as exc:
        raise DataError(f"cannot read numpy data ({exc.__class__.__name__}: {exc})", path=path) from None
    if suffix == ".npz":
        return Part(path, _npz_members(path))
    with open(path, "rb") as fh:
        declared = _check_declared_array(fh, path.stat().st_size, path, "")
    if declared is None:
        _load_whole(Part(path, {}), [""])  # np.load says what is wrong with the header
        raise DataError("not a valid numpy file (its header can't be read)", path=path)
    if declared[1].hasobject:
        raise DataError("holds pickled Python objects, which are never loaded; save a numeric array", path=path)
    return Part(path, {"": declared})


def _npz_members(path: Path) -> dict:
    """Each member of a .npz is unpacked in memory: its header, like a .npy's, must match its
    size, and all of them together must fit."""
    from ..budget import check_allocation

    members = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                with zf.open(info) as fh:
                    declared = _check_declared_array(fh, info.file_size, path, f"member {info.filename}: ")
                if declared is not None:
                    members[info.filename.removesuffix(".npy")] = declared
    except (zipfile.BadZipFile, OSError):
        return {}  # np.load reports it
    check_allocation(sum(info.file_size for info in infos), "the arrays of this .npz", path=path)
    return members


def _check_declared_array(fh, size: int, path: Path, label: str):
    """(shape, dtype) a .npy header declares, after checking the file holds that many bytes and
    that they fit in memory; None when the header is malformed (np.load reports it)."""
    from ..budget import check_allocation

    try:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh, max_header_size=10000)
        data_start = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return None
    if dtype.hasobject:
        return tuple(shape), dtype
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = size - data_start
    if needed > held:
        raise DataError(f"{label}its header declares an array of shape {tuple(shape)} ({needed} bytes) but the file "
                        f"holds {held} bytes (truncated or forged file)", path=path)
    check_allocation(needed, f"{label}the array of shape {tuple(shape)}", path=path)
    return tuple(shape), dtype


def _fed_members(part: Part, specs: list[InputSpec]) -> tuple[list[str], list[str]]:
    """(member names, input names) of the arrays feeding the model's inputs, in input order."""
    if part.path.suffix.lower() == ".npy":
        return [""], [specs[0].name if specs else "input"]
    named = part.members
    if not named:
        _load_whole(part, [])  # an unreadable archive: np.load says why
        raise DataError("the .npz archive holds no arrays", path=part.path)
    spec_names = {s.name for s in specs}
    if required_count(specs) <= 1 and len(named) == 1 and next(iter(named)) not in spec_names - {specs[0].name}:
        return list(named), [specs[0].name]
    members = []
    for spec in specs:
        if spec.name in named:
            members.append(spec.name)
        elif not spec.optional:
            missing = [s.name for s in specs if s.name not in named and not s.optional]
            raise DataError(f"no array for model input(s) {', '.join(missing)}; the archive holds "
                            f"{', '.join(sorted(named))}", path=part.path)
        else:
            later = [s.name for s in specs[specs.index(spec) + 1:] if s.name in named]
            if later:
                raise DataError(f"holds {later[0]!r} but not {spec.name!r}, which comes before it in the model's "
                                "inputs (they are passed in order)", path=part.path)
            break
    return members, list(members)


def _rows(part: Part, members: list[str]) -> int:
    counts = set()
    for m in members:
        shape = part.members[m][0]
        if not shape:
            raise DataError(f"{_label(m)}a 0-d array has no batch axis to join along", path=part.path)
        counts.add(shape[0])
    if len(counts) > 1:
        sizes = ", ".join(f"{m} {part.members[m][0][0]}" for m in members)
        raise DataError(f"the arrays of one sample differ in batch size ({sizes})", path=part.path)
    return counts.pop()


def _check_trailing(part: Part, first: Part, member: str) -> None:
    shape, want = part.members[member][0], first.members[member][0]
    if shape[1:] != want[1:]:
        raise DataError(f"{_label(member)}shape {shape} does not join shape {want} of {first.path} along the "
                        "batch axis (every other axis must match)", path=part.path)
    kinds = {part.members[member][1].kind, first.members[member][1].kind}
    if len(kinds) > 1 and not kinds <= set("iub") and not kinds <= set("f"):
        raise DataError(f"{_label(member)}{part.members[member][1]} values do not join the "
                        f"{first.members[member][1]} values of {first.path}", path=part.path)


def _label(member: str) -> str:
    return f"array {member!r}: " if member else ""


def _check_sample(shapes: dict, dtypes: dict, parts: list[Part], take: int, where) -> None:
    """The sample (stored values plus their float32 copy) must fit before anything is read."""
    from ..budget import available_bytes, check_allocation

    per_row = sum(int(np.prod(s[1:], dtype=object)) * (dtypes[m].itemsize + 4) for m, s in shapes.items())
    described = ", ".join(str(s) for s in shapes.values())
    check_allocation(per_row * take, f"the sample of {take} rows from {len(parts)} file(s) (shape {described})",
                     path=where, hint=f"pass --samples N to use fewer ({available_bytes() // max(per_row, 1)} fit)")


def _load_rows(part: Part, members: list[str], count: int) -> dict[str, np.ndarray]:
    """The first ``count`` rows of each member of ``part``."""
    with _reading(part.path):
        if part.path.suffix.lower() == ".npy":
            return {"": np.load(part.path, mmap_mode="r", allow_pickle=False)[:count]}
        with np.load(part.path, allow_pickle=False) as archive:
            return {m: archive[m][:count] for m in members}


def _load_whole(part: Part, members: list[str]) -> list[np.ndarray]:
    with _reading(part.path):
        if part.path.suffix.lower() == ".npy":
            return [np.load(part.path, allow_pickle=False)]
        with np.load(part.path, allow_pickle=False) as archive:
            return [archive[m] for m in members]


class _reading:
    """numpy's errors on reading ``path`` as one DataError naming the file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, DataError):
            return False
        if isinstance(exc, ValueError):
            if "pickle" in str(exc).lower():
                raise DataError("holds pickled Python objects, which are never loaded; save a numeric array",
                                path=self.path) from None
            raise DataError(f"not a valid numpy file ({exc})", path=self.path) from None
        if isinstance(exc, (OSError, EOFError, zipfile.BadZipFile, KeyError)):
            raise DataError(f"cannot read numpy data ({exc.__class__.__name__}: {exc})", path=self.path) from None
        return False
