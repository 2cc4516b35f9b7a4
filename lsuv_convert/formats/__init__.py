"""Model formats: the plug-in contract, the graph every format loads into, the plug-ins, their registry.

Lives here: ``contract`` (``ModelFormat``: load -> prepare -> save, measure; ``LoadRequest``,
``LoadedModel``), ``model_graph`` (``ModelGraph``, ``TargetLayer``, ``InputSpec``), ``registry``
(``register_format``, ``find_format``: the only way the command reaches a format), ``shared/``
(what several plug-ins use), and one sub-package per format (``onnx``, ``caffe``, ``torchscript``,
``pt2``, ``state_dict``, ``huggingface``).

May import: the base modules and the ``lsuv`` room. A plug-in imports the contract, the registry,
``shared/`` and itself, never another plug-in, the batch reader or the command.
"""

from __future__ import annotations

from .registry import (
    FORMATS,
    all_formats,
    directory_format,
    find_format,
    get_format,
    model_extensions,
    register_format,
)

__all__ = ["FORMATS", "all_formats", "directory_format", "find_format", "get_format", "model_extensions",
           "register_format"]
