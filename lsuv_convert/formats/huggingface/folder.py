"""A Hugging Face model folder's files: the safetensors shards in, the same file set out.

Read: ``model.safetensors``, or the shards named by ``model.safetensors.index.json``, each with
its ``__metadata__``. Write: a new folder ``NAME.lsuv/`` holding every other file of the input
folder unchanged (config, tokenizer, index, ...) and each shard rewritten with the same keys,
dtypes and metadata (plus the tool's provenance entries). The folder is built aside and
swapped in by :func:`lsuv_convert.folders.atomic_folder` (crash-safe, see its protocol); links
to folders inside the input are not followed (no walk out of the folder, no loop).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelFormatError, OutputError
from ...folders import atomic_folder, copy_folder

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
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
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


def write_folder(source: Path, out: Path, shards: list[Shard], provenance: dict) -> list[str]:
    """``out`` = ``source`` with the shards replaced by ``shards``: built aside, then swapped in
    crash-safe (:mod:`lsuv_convert.folders`); returns the links that were not copied."""
    from ..shared.safetensors_io import write_safetensors

    with atomic_folder(out) as tmp:
        try:
            left_out = copy_folder(source, tmp, skip={s.name for s in shards})
        except (OSError, shutil.Error) as exc:
            raise OutputError(f"cannot copy the folder's files: {exc}", path=out) from None
        for shard in shards:
            write_safetensors(shard.tensors, tmp / shard.name, shard.metadata, provenance)
            shutil.copymode(source / shard.name, tmp / shard.name)  # the writer makes it 0600
    return left_out
