"""A Hugging Face model folder's files: the weight shards in, the same file set out.

Read, in the order ``from_pretrained`` looks for them in a local folder: ``model.safetensors``,
the shards named by ``model.safetensors.index.json``, ``pytorch_model.bin``, the shards named by
``pytorch_model.bin.index.json``; the first found is the model's weights (safetensors is
preferred when both exist, as transformers does). ``.bin`` files are read with torch's
weights-only unpickler (:mod:`..shared.torch_save`). No other file of the folder is read as an
input (``training_args.bin``, optimizer states, tokenizers): they are copied as bytes.
Write: a new folder ``NAME.lsuv/`` holding every other file of the input folder unchanged
(config, tokenizer, index, ...) and each shard rewritten in its own container with the same
keys, dtypes and metadata (safetensors: plus the tool's provenance entries). The folder is built
aside and swapped in by :func:`lsuv_convert.folders.atomic_folder` (crash-safe, see its
protocol); links to folders inside the input are copied as links, never followed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelFormatError, OutputError
from ...folders import atomic_folder, copy_folder

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# transformers' own names, in the order from_pretrained tries them for a local folder
WEIGHT_FILES = ((SINGLE, None), (None, INDEX), (BIN_SINGLE, None), (None, BIN_INDEX))


@dataclass
class Shard:
    name: str  # file name inside the folder
    tensors: dict  # key -> tensor, as read (a .bin shard: the object torch.load returned)
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__
    kind: str = "safetensors"  # or "zip" / "legacy": a torch.save file (pytorch_model*.bin)


def is_model_folder(path: Path) -> bool:
    return (path / CONFIG).is_file() and any((path / (single or index)).is_file() for single, index in WEIGHT_FILES)


def weight_files(folder: Path) -> tuple[list[str], list[str]]:
    """(the shards the model's weights come from, the folder's other weight files, left as they
    are): the first of transformers' weight files the folder has, as from_pretrained picks it."""
    for single, index in WEIGHT_FILES:
        name = single or index
        if (folder / name).is_file():
            chosen = [single] if single else _indexed(folder, index)
            others = [n for s, i in WEIGHT_FILES if (n := s or i) != name and (folder / n).is_file()]
            return chosen, others
    raise ModelFormatError(f"has no {SINGLE}, {BIN_SINGLE} or shard index", path=folder)


def _indexed(folder: Path, index_name: str) -> list[str]:
    try:
        index = json.loads((folder / index_name).read_text())
        weight_map = index["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ModelFormatError(f"{index_name} is not a valid shard index ({type(exc).__name__}: {exc})",
                               path=folder) from None
    for name in names:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ModelFormatError(f"{index_name} names a shard outside the folder: {name!r}", path=folder)
        if not (folder / name).is_file():
            raise ModelFormatError(f"shard {name} named by {index_name} is missing", path=folder)
    return names


def read_shards(folder: Path) -> list[Shard]:
    from ..shared.safetensors_io import read_safetensors
    from ..shared.torch_save import read_weights_only

    shards = []
    for name in weight_files(folder)[0]:
        if name.endswith(".safetensors"):
            tensors, metadata = read_safetensors(folder / name, where=folder)
            shards.append(Shard(name, tensors, metadata))
            continue
        obj, kind = read_weights_only(folder / name)
        if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
            raise ModelFormatError(f"{name} does not hold a dict of named tensors", path=folder)
        shards.append(Shard(name, obj, kind=kind))
    return shards


def write_folder(source: Path, out: Path, shards: list[Shard], provenance: dict) -> list[str]:
    """``out`` = ``source`` with the shards replaced by ``shards``: built aside, then swapped in
    crash-safe (:func:`lsuv_convert.folders.atomic_folder`); returns the links to folders that
    were copied as links (never followed)."""
    with atomic_folder(out) as tmp:
        try:
            links = copy_folder(source, tmp, skip={s.name for s in shards})
        except (OSError, shutil.Error) as exc:
            raise OutputError(f"cannot copy the folder's files: {exc}", path=out) from None
        for shard in shards:
            write_shard(shard, tmp / shard.name, provenance)
            shutil.copymode(source / shard.name, tmp / shard.name)  # writers make it 0600
    return links


def write_shard(shard: Shard, path: Path, provenance: dict) -> None:
    """One shard in its own container: safetensors (with provenance metadata) or torch.save."""
    from ..shared.safetensors_io import write_safetensors
    from ..shared.torch_save import write_torch_save

    if shard.kind == "safetensors":
        write_safetensors(shard.tensors, path, shard.metadata, provenance)
    else:
        write_torch_save(shard.tensors, path, shard.kind)
@contextlib.contextmanager
def staged_folder(source: Path, out: Path, shard_names: list[str]):
    """The output folder of a streamed run: every file of ``source`` but the shards copied into a
    folder built aside (:func:`lsuv_convert.folders.atomic_folder`, as :func:`write_folder` does);
    yields ``{shard name: its path there}`` for the streaming writers, and on a clean exit the
    folder is swapped in crash-safe."""
    with atomic_folder(out) as tmp:
        try:
            copy_folder(source, tmp, skip=set(shard_names))
        except (OSError, shutil.Error) as exc:
            raise OutputError(f"cannot copy the folder's files: {exc}", path=out) from None
        yield {name: tmp / name for name in shard_names}
        for name in shard_names:
            if (tmp / name).exists():
                shutil.copymode(source / name, tmp / name)  # writers make it 0600
