"""The up-to-date record: what produced an output, so that a rerun skips only honest matches.

For each output the runner keeps a record in its state folder (``$LSUV_CONVERT_STATE``, else
``$XDG_CACHE_HOME/lsuv-convert/records``, else ``~/.cache/lsuv-convert/records``), named by the
hash of the output's resolved path: nothing is added beside the user's files, so no folder
walk or glob can take a record for a model, and a moved output simply gets rebuilt. It holds the sha256 of
every file the conversion read (model, companions such as external data, weights, data batch
or image folder), the settings, the tool version, and the sha256 of every file it wrote
(outputs, log, plot). It is removed before a rebuild starts and written last, after every
output, so a run that fails half-way leaves no record and is redone next time.

A model is skipped only if the record matches on all of it, and every log / plot requested
now was produced by that run and is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

from ..version import __version__
from ..atomic import write_bytes_atomic
from ..errors import LsuvError
from ..formats.shared.safetensors_io import PROVENANCE_PREFIX
from ..paths import walk_folder

_CHUNK = 1 << 20


def state_dir() -> Path:
    explicit = os.environ.get("LSUV_CONVERT_STATE")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "lsuv-convert" / "records"


def record_path(output: Path) -> Path:
    return state_dir() / (hashlib.sha256(os.path.realpath(output).encode()).hexdigest()[:40] + ".json")


def file_digest(path: Path) -> str | None:
    """sha256 of a regular file, or of a folder's files (names and contents, sorted, links to
    folders not followed); None when missing or not a regular file (a FIFO or a device is never
    opened: a tampered record that lists one makes the run rebuild, it can't make it hang)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        digest = hashlib.sha256()
        for rel, kind, child in sorted(walk_folder(path)):
            if kind in ("dir", "dir-link", "dangling-link"):
                continue
            digest.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            digest.update((_hash_file(child) or kind).encode() + b"\0")
        return "dir:" + digest.hexdigest()
    return _hash_file(path)


def _hash_file(path: Path) -> str | None:
    """sha256 of a regular file; None for anything else. Opened without blocking and checked
    again once open, so a file swapped for a FIFO meanwhile is not read either."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=False) as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def digests(paths) -> dict[str, str | None]:
    return {_key(p): file_digest(Path(p)) for p in paths if p is not None}


def _key(path) -> str:
    return os.path.realpath(path)


def fingerprint(options) -> dict:
    """Everything besides the input files that decides an output: every field of ``options``
    (the load request, the settings, ... whatever fields they have: nothing listed by hand),
    paths resolved, plus the tool version and, for an ``--arch module:factory``, the folder
    the module is imported from (its source files are recorded as inputs, :func:`code_files`)."""
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    out = {"options": _plain(fields), "version": __version__, "libraries": _library_versions()}
    if _factory_module(options) is not None:
        out["import_folder"] = os.path.realpath(os.getcwd())  # --arch imports from the working folder first
    return out


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str | None]:
    """The versions of the libraries whose numerics and writers make the bytes of an output."""
    from importlib import metadata

    out = {}
    for name in ("torch", "numpy", "onnx", "onnx2torch", "safetensors", "transformers", "torchvision"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _plain(value):
    """``value`` as JSON-able data: an object's own ``fingerprint()`` when it has one (the data
    options: globs expanded), dataclasses by field, paths resolved, tuples as lists."""
    own = getattr(value, "fingerprint", None)
    if callable(own) and not isinstance(value, type):
        return _plain(own())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, os.PathLike):
        return {"path": os.path.realpath(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _factory_module(options) -> str | None:
    """The module of an ``--arch package.module:factory`` (None for torchvision:/timm: names)."""
    arch = getattr(getattr(options, "request", None), "arch", None)
    if not isinstance(arch, str) or ":" not in arch:
        return None
    module = arch.partition(":")[0].strip()
    return None if module in ("torchvision", "timm") else module


def code_files(options) -> list[Path]:
    """The source files of an ``--arch package.module:factory`` once imported: the module, its
    parent packages and every other module of its top package that is loaded (what it imports)."""
    module = _factory_module(options)
    if module is None:
        return []
    root = module.split(".")[0]
    files = []
    for name, mod in list(sys.modules.items()):
        if name == root or name.startswith(root + "."):
            file = getattr(mod, "__file__", None)
            if isinstance(file, str) and os.path.isfile(file):
                files.append(Path(file))
    return sorted(set(files))


def records_output(output: Path) -> bool:
    """Whether the record shows ``output`` was written by this tool (so it may be replaced)."""
    try:
        record = json.loads(record_path(output).read_text())
        return _key(output) in (record.get("outputs") or {})
    except (OSError, ValueError, AttributeError):
        return False


def written_by_us(folder: Path) -> bool:
    """An existing output folder this tool wrote: its record says so, or a safetensors file in it
    carries the tool's provenance (``lsuv_convert.*`` metadata) - a folder of anything else is
    never replaced."""
    if records_output(folder):
        return True
    try:
        names = [e.path for e in os.scandir(folder) if e.name.endswith(".safetensors") and e.is_file(follow_symlinks=False)]
    except OSError:
        return False
    for name in names:
        try:
            with open(name, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size)) if 2 <= size < 100_000_000 else {}
        except (OSError, ValueError):
            continue
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        if isinstance(metadata, dict) and any(str(k).startswith(PROVENANCE_PREFIX) for k in metadata):
            return True
    return False


def forget(output: Path) -> None:
    """Drop the record before the output is rebuilt: a failure half-way must not look finished."""
    with contextlib.suppress(OSError):
        record_path(output).unlink()


def write_record(output: Path, *, settings: dict, inputs: dict[str, str | None], written: list[Path],
                 extras: dict[str, Path | None]) -> None:
    """Write the record of a finished conversion (after every output file is in place)."""
    record = {
        "tool": "lsuv-convert", "version": __version__, "output": _key(output), "settings": settings, "inputs": inputs,
        "outputs": digests(p for p in written if Path(p).exists()),
        "extras": {role: (_key(p) if p is not None else None) for role, p in extras.items()},
        "extra_digests": digests(p for p in extras.values() if p is not None),
    }
    try:
        write_bytes_atomic(record_path(output), (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    except (OSError, LsuvError):  # no writable state folder: the output is simply rebuilt next time
        pass


def is_up_to_date(output: Path, *, settings: dict, inputs: list[Path], extras: dict[str, Path | None]) -> bool:
    """Whether ``output``'s record shows the same inputs (by content), settings, tool version,
    and every requested log / plot from that run, unchanged. A record that is not what this
    tool writes (edited by hand, damaged) means: rebuild."""
    try:
        return _matches(output, settings, inputs, extras)
    except (TypeError, AttributeError, ValueError):
        return False


def _matches(output: Path, settings: dict, inputs: list[Path], extras: dict[str, Path | None]) -> bool:
    try:
        record = json.loads(record_path(output).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("version") != __version__ or record.get("settings") != settings:
        return False
    recorded_inputs = record.get("inputs") or {}
    if not {_key(p) for p in inputs} <= set(recorded_inputs):
        return False  # another data file, another --weights, ...
    for path, digest in recorded_inputs.items():  # companions the format read included
        if digest is None or file_digest(Path(path)) != digest:
            return False
    outputs = record.get("outputs") or {}
    if _key(output) not in outputs:
        return False
    for path, digest in outputs.items():
        if file_digest(Path(path)) != digest:
            return False
    recorded_extras = record.get("extras") or {}
    extra_digests = record.get("extra_digests") or {}
    for role, path in extras.items():
        if path is None:
            continue
        key = _key(path)
        if recorded_extras.get(role) != key or key not in extra_digests or file_digest(Path(path)) != extra_digests[key]:
            return False
    return True
