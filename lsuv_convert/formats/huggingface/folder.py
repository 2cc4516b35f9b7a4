"""A Hugging Face model folder's files: the safetensors shards in, the same file set out.

Read: ``model.safetensors``, or the shards named by ``model.safetensors.index.json``, each with
its ``__metadata__``. Write: a new folder ``NAME.lsuv/`` holding every other file of the input
folder unchanged (config, tokenizer, index, ...) and each shard rewritten with the same keys,
dtypes and metadata (plus the tool's provenance entries). The folder is built beside its
destination under a hidden temporary name and renamed into place when complete, so a failed
or interrupted run leaves the previous output (or nothing) as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ... import interrupt
from ...errors import ModelFormatError, OutputError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


@dataclass
class Shard:
    name: str  # file name inside the folder
    tensors: dict  # key -> tensor, as read
    metadata: dict[str, str] = field(default_factory=dict)


def is_model_folder(path: Path) -> bool:
    return (path / CONFIG).is_file() and ((path / SINGLE).is_file() or (path / INDEX).is_file())


def shard_names(folder: Path) -> list[str]:
    if (folder / SINGLE).is_file():
        return [SINGLE]
    try:
        index = json.loads((folder / INDEX).read_text())
        weight_map = index["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ModelFormatError(f"{INDEX} is not a valid shard index ({type(exc).__name__}: {exc})", path=folder) from None
    for name in names:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ModelFormatError(f"{INDEX} names a shard outside the folder: {name!r}", path=folder)
        if not (folder / name).is_file():
            raise ModelFormatError(f"shard {name} named by {INDEX} is missing", path=folder)
    return names


def read_shards(folder: Path) -> list[Shard]:
    from ..shared.safetensors_io import read_safetensors

    shards = []
    for name in shard_names(folder):
        tensors, metadata = read_safetensors(folder / name, where=folder)
        shards.append(Shard(name, tensors, metadata))
    return shards


def write_folder(source: Path, out: Path, shards: list[Shard], provenance: dict) -> None:
    """``out`` = ``source`` with the shards replaced by ``shards``; built aside, then renamed in."""
    from ..shared.safetensors_io import write_safetensors

    written = {s.name for s in shards}
    with _folder_swap(out) as tmp:
        try:
            shutil.copytree(source, tmp, symlinks=False, dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names if Path(folder) == source and n in written])
        except (OSError, shutil.Error) as exc:
            raise OutputError(f"cannot copy the folder's files: {exc}", path=out) from None
        for shard in shards:
            write_safetensors(shard.tensors, tmp / shard.name, shard.metadata, provenance)
            with open(tmp / shard.name, "rb+") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def _folder_swap(dest: Path):
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {parent}: {exc.strerror or exc}", path=dest) from exc
    old = None
    try:
        yield tmp
        interrupt.check()
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"cannot write: {exc.strerror or exc}", path=dest) from exc
    finally:
        if old is not None and (old / dest.name).exists() and not dest.exists():
            os.replace(old / dest.name, dest)  # interrupted between the renames: the previous output goes back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
