"""transformers' ``Conv1D`` (GPT, GPT-2, ImageGPT, ...) as a target layer, without importing transformers.

Conv1D is a linear layer whose weight is stored transposed, ``(in, out)``: ``y = x @ W + b``. The
engine and the pre-init take any target through the layout attributes they read on it:
``lsuv_channel_dim`` (the output dim the bias runs along: the last), ``lsuv_out_axis`` (1: output
features index the weight's columns, so q / k / v slices are column blocks) and ``lsuv_parts``
(GPT-2's ``c_attn`` packs q, k and v, which its attention module splits by ``split_size``; each
is fitted as its own map, as the TorchScript path does, see :func:`.attention.packed_parts`).
Those attributes are set on the instances only while :func:`layouts` is entered, so a user's
model keeps no trace of the run.
"""

from __future__ import annotations

import contextlib

from torch import nn

from .attention import packed_parts
from .targets import is_conv1d


def conv1d_layout(root: nn.Module, path: str, module: nn.Module) -> dict[str, int]:
    """The layout attributes of the Conv1D at ``path`` in ``root`` (its q / k / v parts included)."""
    owner = root.get_submodule(path.rpartition(".")[0]) if "." in path else root
    return {"lsuv_channel_dim": -1, "lsuv_out_axis": 1, "lsuv_parts": packed_parts(owner, module.nf)}


@contextlib.contextmanager
def layouts(root: nn.Module, targets: dict[str, nn.Module]):
    """Give each Conv1D among ``targets`` its layout attributes for the duration of a run."""
    set_on = []
    try:
        for path, module in targets.items():
            if is_conv1d(module) and not hasattr(module, "lsuv_out_axis"):
                for attr, value in conv1d_layout(root, path, module).items():
                    setattr(module, attr, value)
                set_on.append(module)
        yield
    finally:
        for module in set_on:
            for attr in ("lsuv_channel_dim", "lsuv_out_axis", "lsuv_parts"):
                module.__dict__.pop(attr, None)
