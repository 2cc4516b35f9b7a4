"""Checkpoint files in and out: ``torch.save`` files (zip or legacy pickle) and ``.safetensors``.

``torch.save`` files are read with ``torch.load(weights_only=True)`` only: torch's restricted
unpickler builds tensors and plain containers and refuses every other class, so no code in
the file runs. A file that needs a full unpickle is refused with a line saying so. The
written file holds the same object: same containers, keys, dtypes and non-tensor entries,
with only the initialized tensors' values changed (copied into the loaded tensors in place,
so storage shared between entries stays shared).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...atomic import atomic_path
from ...errors import ModelFormatError, OutputError, first_line
from ..shared.safetensors_io import read_safetensors, write_safetensors

# torch.save's legacy format starts with this number, pickled (little-endian LONG1 payload)
_LEGACY_MAGIC = bytes.fromhex("6cfc9c46f9206aa85019")
_RESAVE_HINT = "save the weights alone: torch.save(model.state_dict(), path)"


@dataclass
class Checkpoint:
    """A loaded checkpoint file: the object as the file holds it and how to write it back."""

    obj: Any  # dict of tensors (safetensors) or whatever torch.save stored (plain containers + tensors)
    kind: str  # "zip", "legacy" (torch.save) or "safetensors"
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__


def torch_save_kind(path: Path) -> str | None:
    """"zip" for a torch.save zip (data.pkl, no TorchScript code), "legacy" for torch.save's
    pickle format, "pickle" for any other pickle, else None. Reads the zip directory or the
    first bytes only."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if head[:1] == b"\x80":
        return "legacy" if _LEGACY_MAGIC in head else "pickle"
    if head[:2] != b"PK":
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    prefixes = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(prefixes) != 1:
        return None
    (prefix,) = prefixes
    scripted = f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names)
    return "zip" if f"{prefix}/data.pkl" in names and not scripted else None


def read_checkpoint(path: Path) -> Checkpoint:
    if path.name.lower().endswith(".safetensors"):
        return _read_safetensors(path)
    kind = torch_save_kind(path)
    if kind == "pickle":
        raise ModelFormatError(
            "is a plain Python pickle, not a torch.save checkpoint; lsuv-convert never unpickles arbitrary "
            f"objects: {_RESAVE_HINT}", path=path)
    if kind is None:
        raise ModelFormatError("is not a torch.save checkpoint (neither its zip nor its legacy format)", path=path)
    from ..shared.archive_guard import check_torch_save_file

    check_torch_save_file(path)  # its zip directory and every pickle, before torch reads a byte
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError alike
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise ModelFormatError(
                f"holds pickled Python objects{what}, not only tensors and plain containers; it would need a full "
                f"unpickle, which can run any code, and lsuv-convert reads checkpoints with "
                f"torch.load(weights_only=True) only: {_RESAVE_HINT}", path=path) from None
        raise ModelFormatError(f"torch.load cannot read it (truncated or damaged?): {first_line(exc)}",
                               path=path) from None
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
            import torch

            try:
                torch.save(checkpoint.obj, str(tmp), _use_new_zipfile_serialization=checkpoint.kind == "zip")
            except RuntimeError as exc:
                raise OutputError(f"torch.save failed: {first_line(exc)}", path=out_path) from None
