"""Checkpoint files in and out: ``torch.save`` files (zip or legacy pickle) and ``.safetensors``.

``torch.save`` files are read with ``torch.load(weights_only=True)`` only
(:mod:`..shared.torch_save`, which the Hugging Face plug-in's ``.bin`` shards go through too). The
written file holds the same object: same containers, keys, dtypes and non-tensor entries,
with only the initialized tensors' values changed (copied into the loaded tensors in place,
so storage shared between entries stays shared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...atomic import atomic_path
from ..shared.safetensors_io import read_safetensors, write_safetensors
from ..shared.torch_save import read_weights_only, write_torch_save


@dataclass
class Checkpoint:
    """A loaded checkpoint file: the object as the file holds it and how to write it back."""

    obj: Any  # dict of tensors (safetensors) or whatever torch.save stored (plain containers + tensors)
    kind: str  # "zip", "legacy" (torch.save) or "safetensors"
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__


def read_checkpoint(path: Path) -> Checkpoint:
    if path.name.lower().endswith(".safetensors"):
        return _read_safetensors(path)
    obj, kind = read_weights_only(path)
    return Checkpoint(obj, kind)


def _read_safetensors(path: Path) -> Checkpoint:
    tensors, metadata = read_safetensors(path)
    return Checkpoint(tensors, "safetensors", metadata)


def write_checkpoint(checkpoint: Checkpoint, out_path: Path, provenance: dict) -> None:
    """Write ``checkpoint`` as the file it was read from was written (same container format)."""
    with atomic_path(out_path) as tmp:
        if checkpoint.kind == "safetensors":
            write_safetensors(checkpoint.obj, tmp, checkpoint.metadata, provenance)
        else:
            write_torch_save(checkpoint.obj, tmp, checkpoint.kind, where=out_path)
