"""Import onnx2torch without importing torchvision (and with it torch._dynamo) up front.

onnx2torch imports every node converter at import time, and two of them (NonMaxSuppression,
RoiAlign) import torchvision, whose ``ops`` import ``torch._dynamo``: about 1.6 s of CPU and
180 MB of memory on every ONNX run, for two ops that almost no model has. While onnx2torch
is imported, ``torchvision`` and ``torchvision.ops`` are stand-ins that import the real
modules at their first real use (a model that has one of those ops); afterwards the stand-ins
leave ``sys.modules``, so any later ``import torchvision`` gets the real package. Nothing of
onnx2torch is changed: its converters and registry are the ones it ships.
"""

from __future__ import annotations

import importlib
import sys
import types


class _Deferred(types.ModuleType):
    """A module whose attributes come from the real module of the same name, imported on first use."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # the import system probes __path__ etc.: not a use
            raise AttributeError(attr)
        return getattr(importlib.import_module(self.__name__), attr)


def _deferred_function(module: str, name: str):
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = f"deferred {module}.{name}"
    return call


def import_onnx2torch() -> None:
    """Import onnx2torch's converters (once); torchvision only if it is already imported."""
    if "onnx2torch.node_converters" in sys.modules or "torchvision" in sys.modules:
        import onnx2torch

        return
    stand_ins = {"torchvision": _Deferred("torchvision"), "torchvision.ops": _Deferred("torchvision.ops")}
    stand_ins["torchvision.ops"].roi_align = _deferred_function("torchvision.ops", "roi_align")
    sys.modules.update(stand_ins)
    try:
        import onnx2torch  # noqa: F401 - imported for its side effect: converters register under the stand-ins
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
