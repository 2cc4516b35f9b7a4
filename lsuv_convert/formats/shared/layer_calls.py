"""Modules that stand for a graph's conv / linear *calls*: shared by the plug-ins that read an
op-level graph (TorchScript, torch.export), which may not import each other.

Each module holds the graph's own weight (and bias) parameter and calls the node's op with the
node's own arguments, so its output is bit for bit the graph's. It subclasses ``nn.Conv*`` /
``nn.Linear`` where the op is ``f(x, W) + bias`` (the engine then scales without re-running);
otherwise it is a generic target the engine re-runs. One module per weight: a weight used by
several calls is one layer, scaled once at its first use; calls that differ in constant
arguments are variants, chosen by a leading index argument. How a call's argument slots become
arguments is the plug-in's: its mixin defines ``_arguments(slots, dynamic)``.
"""

from __future__ import annotations

import torch
from torch import nn


def layer_name(weight_path: str) -> str:
    """``layer1.0.conv1.weight`` -> ``layer1.0.conv1``; other parameter names stay whole."""
    owner, _, attr = weight_path.rpartition(".")
    return owner if attr == "weight" and owner else weight_path


class CallsLayerOp:
    """Mixin: ``forward(*dynamic)``, or ``forward(variant, *dynamic)`` for several variants.

    ``variants`` are the plug-in's call records; each has ``slots``, ``op`` (the op overload),
    ``kw_names`` (keyword-only argument names, last in ``slots``), ``groups`` and ``kind``."""

    lsuv_source_kind: str

    def _init_call(self, variants: list, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        nn.Module.__init__(self)
        self.weight = weight
        self.register_parameter("bias", bias)
        self.groups = variants[0].groups
        self.lsuv_source_kind = variants[0].kind
        self._variants = [(c.slots, c.op, len(c.slots) - len(c.kw_names), c.kw_names) for c in variants]

    def _arguments(self, slots, dynamic) -> list:
        raise NotImplementedError

    def forward(self, *args):
        if len(self._variants) == 1:
            (slots, op, n, kw_names), dynamic = self._variants[0], args
        else:
            (slots, op, n, kw_names), dynamic = self._variants[args[0]], args[1:]
        full = self._arguments(slots, dynamic)
        if kw_names:
            return op(*full[:n], **dict(zip(kw_names, full[n:])))
        return op(*full)

    def extra_repr(self) -> str:
        return f"{self.lsuv_source_kind}, weight={tuple(self.weight.shape)}, bias={self.bias is not None}"


class CallConv(CallsLayerOp, nn.modules.conv._ConvNd):
    """A convolution call (``f(x, W) + b`` along dim 1)."""

    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)


class CallConvTranspose(CallsLayerOp, nn.modules.conv._ConvTransposeNd):
    """A transposed convolution call; weight stored (in, out/groups, k...)."""

    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)


class CallLinear(CallsLayerOp, nn.Linear):
    """A linear call (bias along the last dim)."""

    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)


class CallLayer(CallsLayerOp, nn.Module):
    """A conv / linear call whose output is not ``f(x, W) + self.bias``: re-run on every scaling."""

    lsuv_target = True

    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)

    def lsuv_grouped_view(self) -> torch.Tensor:
        # conv (out, in/g, k...), transposed conv (in, out/g, k...), linear (out, in): the
        # first dim splits into groups in every case.
        w = self.weight
        return w.view(self.groups, w.shape[0] // self.groups, -1)
