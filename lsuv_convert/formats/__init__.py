"""Format plug-ins and their registry.

A format is a class decorated with :func:`register_format` that provides

- ``name`` and ``extensions`` (lower-case, with the dot),
- ``sniff(path) -> bool``: cheap check that the file is of this format,
- ``load(path, *, weights=None) -> ModelGraph``,
- ``save(graph, out_path) -> None`` (atomic, via :mod:`lsuv_convert.atomic`),
- ``default_output(path) -> Path``: ``NAME.lsuv.EXT`` beside the input,
- ``measure(path, out_path, inputs) -> dict[name, (var, mean)]``: re-measure per-layer
  output statistics of a written file with the format's own runtime (``verify``).

Plug-in modules must import torch/onnx lazily (inside functions) so that discovering
formats stays cheap. The CLI only ever talks to this registry.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import LsuvError, ModelFormatError

_PLUGIN_MODULES = (
    "lsuv_convert.formats.onnx",
    "lsuv_convert.formats.caffe",
    "lsuv_convert.formats.torchscript",
)

FORMATS: dict[str, object] = {}
_loaded = False


def register_format(cls):
    """Class decorator: instantiate the format and add it to the registry."""
    FORMATS[cls.name] = cls()
    return cls


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _PLUGIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a format whose module is not there yet / not installed
            if exc.name != mod:
                raise
    _loaded = True


def all_formats() -> dict[str, object]:
    _load_plugins()
    return FORMATS


def known_extensions() -> set[str]:
    return {ext for fmt in all_formats().values() for ext in fmt.extensions}


def find_format(path: Path | str):
    """The format of the model file ``path``: by extension first, confirmed (or found) by sniffing.

    Every command starts here, so this is also where a missing model file is reported.
    """
    path = Path(path)
    if not path.is_file():
        raise LsuvError("model file not found" if not path.exists() else "not a file", path=path)
    formats = all_formats()
    name = path.name.lower()
    by_ext = [f for f in formats.values() if any(name.endswith(e) for e in f.extensions)]
    for fmt in by_ext:
        if fmt.sniff(path):
            return fmt
    if by_ext:
        return by_ext[0]  # let its loader produce the precise error message
    by_output = [f for f in formats.values() if f.output_extension and name.endswith(f.output_extension)]
    if by_output:
        return by_output[0]  # a written weights file (e.g. .caffemodel): verify finds its definition
    for fmt in formats.values():
        if fmt.sniff(path):
            return fmt
    exts = ", ".join(sorted(known_extensions()))
    raise ModelFormatError(f"unknown model format (known extensions: {exts})", path=path)


def get_format(name: str):
    try:
        return all_formats()[name]
    except KeyError:
        raise ModelFormatError(f"no format plug-in named {name!r}") from None
