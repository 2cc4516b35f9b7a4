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
import hashlib
import json
import os
from pathlib import Path

from ..version import __version__
from ..atomic import write_bytes_atomic
from ..errors import LsuvError

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
    """sha256 of a file, or of a folder's files (names and contents, sorted); None when missing."""
    path = Path(path)
    try:
        if path.is_dir():
            digest = hashlib.sha256()
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(str(child.relative_to(path)).encode() + b"\0")
                digest.update((_hash_file(child) or "").encode() + b"\0")
            return "dir:" + digest.hexdigest()
        return _hash_file(path)
    except OSError:
        return None


def _hash_file(path: Path) -> str | None:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None


def digests(paths) -> dict[str, str | None]:
    return {_key(p): file_digest(Path(p)) for p in paths if p is not None}


def _key(path) -> str:
    return os.path.realpath(path)


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
    and every requested log / plot from that run, unchanged."""
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
