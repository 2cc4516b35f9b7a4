"""Format plug-ins and their registry.

A format is a :class:`~lsuv_convert.formats.contract.ModelFormat` subclass decorated with
:func:`register_format`; the contract (load -> prepare -> save, measure) is in :mod:`.contract`.
The CLI and the pipeline only ever talk to this registry: they never name a format.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TypeVar

from ..errors import LsuvError, ModelFormatError
from .contract import ModelFormat

_PLUGIN_MODULES = (
    "lsuv_convert.formats.onnx",
    "lsuv_convert.formats.caffe",
    "lsuv_convert.formats.torchscript",
    "lsuv_convert.formats.state_dict",  # after TorchScript: both take .pt/.pth, their sniffs exclude each other
    "lsuv_convert.formats.pt2",
    "lsuv_convert.formats.huggingface",
)

FORMATS: dict[str, ModelFormat] = {}
_loaded = False

F = TypeVar("F", bound=type[ModelFormat])


def register_format(cls: F) -> F:
    """Class decorator: check the class honours the contract, instantiate it, add it to the registry."""
    if not (isinstance(cls, type) and issubclass(cls, ModelFormat)):
        raise TypeError(f"{cls!r} is not a ModelFormat")
    folder_only = not cls.extensions and cls.claims_directory.__func__ is not ModelFormat.claims_directory.__func__
    if not cls.name or not (cls.extensions or folder_only) or any(e != e.lower() or not e.startswith(".") for e in cls.extensions):
        raise TypeError(f"{cls.__name__} needs a name and lower-case extensions starting with a dot")
    if cls.name in FORMATS and type(FORMATS[cls.name]) is not cls:
        raise TypeError(f"two format plug-ins are named {cls.name!r}")
    FORMATS[cls.name] = cls()  # abstract methods left unimplemented fail here
    return cls


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _PLUGIN_MODULES:
        importlib.import_module(mod)
    _loaded = True


def all_formats() -> dict[str, ModelFormat]:
    _load_plugins()
    return FORMATS


def model_extensions() -> tuple[str, ...]:
    """Extensions of model files, longest first: what a folder walk or a glob picks up."""
    return tuple(sorted({ext for fmt in all_formats().values() for ext in fmt.extensions}, key=len, reverse=True))


def directory_format(path: Path | str) -> ModelFormat | None:
    """The format that takes the folder ``path`` as one model (a Hugging Face folder), if any."""
    path = Path(path)
    return next((f for f in all_formats().values() if f.claims_directory(path)), None)


def find_format(path: Path | str, *, written: bool = False) -> ModelFormat:
    """The format of the model file ``path``: by extension first, confirmed (or found) by sniffing.

    ``written=True`` (``verify``) also accepts a format's output extension (a written weights
    file). Every command starts here, so this is also where a missing model file is reported.
    A folder is a model only when a format claims it (:meth:`ModelFormat.claims_directory`).
    """
    path = Path(path)
    if path.is_dir():
        fmt = directory_format(path)
        if fmt is None:
            raise LsuvError("is a folder that holds no single model (a Hugging Face model folder has config.json "
                            "and model.safetensors or model.safetensors.index.json)", path=path)
        return fmt
    if not path.is_file():
        raise LsuvError("model file not found" if not path.exists() else "not a file", path=path)
    formats = list(all_formats().values())
    by_ext = [f for f in formats if f.matches(path)]
    for fmt in by_ext:
        if fmt.sniff(path):
            return fmt
    if by_ext:
        return by_ext[0]  # let its loader produce the precise error message
    if written:
        name = path.name.lower()
        by_output = [f for f in formats if f.output_extension and name.endswith(f.output_extension)]
        if by_output:
            return by_output[0]
    for fmt in formats:
        if fmt.sniff(path):
            return fmt
    exts = ", ".join(sorted(model_extensions()))
    raise ModelFormatError(f"unknown model format (known extensions: {exts})", path=path)


def get_format(name: str) -> ModelFormat:
    try:
        return all_formats()[name]
    except KeyError:
        raise ModelFormatError(f"no format plug-in named {name!r}") from None
