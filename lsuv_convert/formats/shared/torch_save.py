"""``torch.save`` files in and out, read with torch's weights-only unpickler only.

Shared by the state_dict and Hugging Face plug-ins (``pytorch_model*.bin``). torch's restricted
unpickler builds tensors and plain containers and refuses every other class, so no code in the
file runs. A file that needs a full unpickle is refused with a line saying so. Every read goes
through :func:`read_weights_only`, and :func:`check_archive` is the one place that judges a file
before torch sees it.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from ...errors import ModelFormatError, OutputError, first_line

# torch.save's legacy format starts with this number, pickled (little-endian LONG1 payload)
_LEGACY_MAGIC = bytes.fromhex("6cfc9c46f9206aa85019")
_RESAVE_HINT = "save the weights alone: torch.save(model.state_dict(), path)"


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


def check_archive(path: Path) -> str:
    """The file's torch.save kind ("zip" or "legacy"), judged before torch reads a byte of it; a
    file that is no torch.save checkpoint (a plain pickle, anything else) is refused."""
    kind = torch_save_kind(path)
    if kind == "pickle":
        raise ModelFormatError(
            "is a plain Python pickle, not a torch.save checkpoint; lsuv-convert never unpickles arbitrary "
            f"objects: {_RESAVE_HINT}", path=path)
    if kind is None:
        raise ModelFormatError("is not a torch.save checkpoint (neither its zip nor its legacy format)", path=path)
    return kind


def read_weights_only(path: Path):
    """(the object a torch.save file holds, its kind), by ``torch.load(weights_only=True)``."""
    kind = check_archive(path)
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
    return obj, kind


def write_torch_save(obj, path: Path, kind: str, where: Path | None = None) -> None:
    """``obj`` written by ``torch.save`` in the container ``kind`` it was read from."""
    import torch

    try:
        torch.save(obj, str(path), _use_new_zipfile_serialization=kind == "zip")
    except RuntimeError as exc:
        raise OutputError(f"torch.save failed: {first_line(exc)}", path=where or path) from None
