"""lsuv-convert: orthonormal + LSUV initialization for models in ONNX, Caffe and TorchScript files.

The heavy parts (torch, onnx) are imported lazily so that the CLI starts instantly.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["lsuv_init", "convert", "__version__"]


def __getattr__(name: str):
    if name == "lsuv_init":
        from .entry import lsuv_init

        return lsuv_init
    if name == "convert":
        from .pipeline import convert

        return convert
    raise AttributeError(f"module 'lsuv_convert' has no attribute {name!r}")
