"""lsuv-convert: orthonormal + LSUV initialization for models in ONNX, Caffe, TorchScript, torch.export,
PyTorch checkpoint and Hugging Face files.

The map of the package (each room's ``__init__`` says what lives there and what it may import):

- ``lsuv/``: the method itself (orthonormal pre-init, the LSUV engine, the account): knows no file.
- ``formats/``: the plug-in contract, the ``ModelGraph`` every format loads into, the plug-ins, and
  ``formats/shared/`` for what several plug-ins use.
- ``batch/``: the data batch (arrays, images, ...) a model is initialized on.
- ``command/``: the CLI, running a command over many models, records, console, plots.
- The few modules every room uses: ``errors``, ``paths``, ``atomic``, ``folders`` (crash-safe
  folder replace, link-safe copies), ``interrupt``, ``budget``, ``timings``, ``version``.

The heavy parts (torch, onnx) are imported lazily so that the CLI starts instantly.
"""

from __future__ import annotations

from .version import __version__

__all__ = ["lsuv_init", "convert", "__version__"]


def lsuv_init(module, batch, settings=None, **options):
    """Orthonormal + LSUV on ``module`` in place, with ``batch``; see :func:`lsuv_convert.lsuv.api.lsuv_init`.

    A ``torch.jit.ScriptModule`` refuses hooks, so it goes through the TorchScript plug-in's
    reader instead; the ``lsuv`` room may not import a plug-in, the package's front door may.
    """
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        from .formats.torchscript.script_module import lsuv_init_script

        return lsuv_init_script(module, batch, settings, **options)
    from .lsuv.api import lsuv_init as init_module

    return init_module(module, batch, settings, **options)


def __getattr__(name: str):
    if name == "convert":
        from .command.convert import convert

        return convert
    raise AttributeError(f"module 'lsuv_convert' has no attribute {name!r}")
