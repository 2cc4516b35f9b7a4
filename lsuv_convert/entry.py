"""``lsuv_convert.lsuv_init``: the Python entry point for any module, TorchScript included.

A plain ``nn.Module`` goes to :func:`lsuv_convert.api.lsuv_init` (hooks on its own forward).
A ``torch.jit.ScriptModule`` refuses hooks, so it goes through the TorchScript plug-in's reader
(:mod:`lsuv_convert.formats.torchscript.api`), which the engine side may not import itself.
"""

from __future__ import annotations

from typing import Any


def lsuv_init(module, batch: Any, **options):
    """Orthonormal pre-init + LSUV of ``module`` in place; see :func:`lsuv_convert.api.lsuv_init`."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        from .formats.torchscript.api import lsuv_init_script

        return lsuv_init_script(module, batch, **options)
    from .api import lsuv_init as init_module

    return init_module(module, batch, **options)


lsuv_init.__doc__ = (lsuv_init.__doc__ or "") + "\n\nA ``torch.jit.ScriptModule`` is read like a TorchScript file."
