"""safetensors files in and out, with the tool's provenance in their ``__metadata__``.

Shared by the state_dict and Hugging Face plug-ins (plug-ins import no other plug-in).
safetensors holds only tensors and a string-to-string metadata map: reading one runs no code.
The provenance entries (``lsuv_convert.*`` keys) sit beside the file's own metadata, which is
kept as it was; they change nothing a loader computes with.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ...errors import ModelFormatError

PROVENANCE_PREFIX = "lsuv_convert."


def is_safetensors(path: Path) -> bool:
    """8-byte little-endian header size, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] < 100_000_000


def read_safetensors(path: Path, where: Path | None = None) -> tuple[dict, dict[str, str]]:
    """(tensors by key in file order, metadata); ``where`` is the path errors name."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        name = "" if where is None else f"{path.name} "
        raise ModelFormatError(f"{name}is not a readable safetensors file: {exc}", path=where or path) from None
    return tensors, metadata


def write_safetensors(tensors: dict, path: Path, metadata: dict[str, str], provenance: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=with_provenance(metadata, provenance))
    _sort_metadata(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header with ``__metadata__`` in sorted order, in the same number of bytes:
    safetensors writes that map in a random order per process (a Rust HashMap), which would make
    two runs of the same conversion differ in bytes."""
    with open(path, "r+b") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        raw = fh.read(size)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or len(metadata) < 2:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items()))}
        ordered.update((k, v) for k, v in header.items() if k != "__metadata__")
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size and json.loads(text) == header:
            fh.seek(8)
            fh.write(text + b" " * (size - len(text)))


def with_provenance(metadata: dict[str, str], provenance: dict) -> dict[str, str]:
    """The file's metadata with the tool's provenance entries (string values) replaced."""
    out = {k: v for k, v in metadata.items() if not k.startswith(PROVENANCE_PREFIX)}
    for key, value in provenance.items():
        out[PROVENANCE_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def provenance_of(metadata: dict[str, str]) -> dict:
    """The provenance entries of safetensors metadata, JSON values decoded."""
    out = {}
    for key, value in metadata.items():
        if key.startswith(PROVENANCE_PREFIX):
            try:
                out[key[len(PROVENANCE_PREFIX):]] = json.loads(value)
            except (ValueError, RecursionError):  # not ours, or nested past any reason: kept as text
                out[key[len(PROVENANCE_PREFIX):]] = value
    return out
