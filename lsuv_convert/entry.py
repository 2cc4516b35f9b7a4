"""``lsuv_convert.lsuv_init``: the Python entry point for any module, TorchScript included.

A plain ``nn.Module`` goes to :func:`lsuv_convert.api.lsuv_init` (hooks on its own forward).
A ``torch.jit.ScriptModule`` refuses hooks, so it goes through the TorchScript plug-in's reader
(:mod:`lsuv_convert.formats.torchscript.api`), which the engine side may not import itself.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import api


@functools.wraps(api.lsuv_init)
def lsuv_init(module, batch: Any, **options):
    if isinstance(module, torch.jit.ScriptModule):
        from .formats.torchscript.api import lsuv_init_script

        return lsuv_init_script(module, batch, **options)
    return api.lsuv_init(module, batch, **options)
