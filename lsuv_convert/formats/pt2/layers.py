"""The modules that stand for a program's conv / linear calls.

Each holds the program's own weight (and bias) parameter and calls the node's aten op with the
node's own arguments, so the result is bit for bit the program's. It subclasses ``nn.Conv*`` /
``nn.Linear`` where the op is ``f(x, W) + bias`` (the engine then scales without re-running);
otherwise (a bias computed at run time) it is a generic target the engine re-runs. One module
per weight: a weight used by several calls is one layer, scaled once at its first use; calls
that differ in constant arguments are variants, chosen by a leading index argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

CONV = {"aten::conv1d", "aten::conv2d", "aten::conv3d"}
CONV_TRANSPOSE = {"aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d"}
CONV_GENERAL = {"aten::_convolution", "aten::convolution"}
LINEAR = {"aten::linear"}
LAYER_KINDS = CONV | CONV_TRANSPOSE | CONV_GENERAL | LINEAR


@dataclass
class LayerCall:
    """One conv / linear node: its op, its argument template and the parameters it reads.

    ``slots`` has one entry per argument: ``("weight",)``, ``("bias",)``, ``("const", value)``
    or ``("dynamic", i)`` (the i-th of ``dynamic``, graph nodes passed at call time)."""

    kind: str
    family: str  # "conv" | "conv_transpose" | "linear"
    op: Any  # the aten OpOverload
    kw_names: tuple[str, ...]
    slots: list[tuple]
    weight_path: str
    bias_path: str | None  # a parameter, or None (no bias, or one computed at run time)
    groups: int
    dynamic: list[Any] = field(default_factory=list)
    linear_in_weight: bool = True  # output = f(x, W) + module.bias with f linear in W
    bias_arg: Any = None  # the node that reads the bias parameter

    def signature(self) -> tuple:
        consts = tuple((s[0], repr(s[1]) if s[0] == "const" else s[1:]) for s in self.slots)
        return (self.kind, self.bias_path, consts)

    def pass_bias_at_call_time(self) -> None:
        """Another call of the same weight has another bias: this one's bias becomes an argument."""
        self.slots = [("dynamic", len(self.dynamic)) if s[0] == "bias" else s for s in self.slots]
        if self.bias_path is not None:
            self.dynamic.append(self.bias_arg)
        self.bias_path = None
        self.linear_in_weight = False


def layer_name(weight_path: str) -> str:
    """``layer1.0.conv1.weight`` -> ``layer1.0.conv1``; other parameter names stay whole."""
    owner, _, attr = weight_path.rpartition(".")
    return owner if attr == "weight" and owner else weight_path


class _CallsNode:
    """Mixin: ``forward(*dynamic)``, or ``forward(variant, *dynamic)`` for several variants."""

    def _init_call(self, variants: list[LayerCall], weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        nn.Module.__init__(self)
        self.weight = weight
        self.register_parameter("bias", bias)
        self.groups = variants[0].groups
        self.lsuv_source_kind = variants[0].kind
        self._variants = [(c.slots, c.op, len(c.slots) - len(c.kw_names), c.kw_names) for c in variants]

    def forward(self, *args):
        if len(self._variants) == 1:
            (slots, op, n, kw_names), dynamic = self._variants[0], args
        else:
            (slots, op, n, kw_names), dynamic = self._variants[args[0]], args[1:]
        full = [self.weight if s[0] == "weight" else self.bias if s[0] == "bias"
                else dynamic[s[1]] if s[0] == "dynamic" else s[1] for s in slots]
        return op(*full[:n], **dict(zip(kw_names, full[n:])))

    def extra_repr(self) -> str:
        return f"{self.lsuv_source_kind}, weight={tuple(self.weight.shape)}, bias={self.bias is not None}"


class ProgramConv(_CallsNode, nn.modules.conv._ConvNd):
    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)


class ProgramConvTranspose(_CallsNode, nn.modules.conv._ConvTransposeNd):
    """Weight stored (in, out/groups, k...)."""

    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)


class ProgramLinear(_CallsNode, nn.Linear):
    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)


class ProgramLayer(_CallsNode, nn.Module):
    """A call whose output is not ``f(x, W) + self.bias``: re-run on every scaling."""

    lsuv_target = True

    def __init__(self, variants, weight, bias):
        self._init_call(variants, weight, bias)

    def lsuv_grouped_view(self) -> torch.Tensor:
        w = self.weight  # conv (out, in/g, k...), transposed (in, out/g, k...), linear (out, in)
        return w.view(self.groups, w.shape[0] // self.groups, -1)


def build_layer(variants: list[LayerCall], weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Module:
    families = {c.family for c in variants}
    if len(families) > 1 or not all(c.linear_in_weight for c in variants):
        return ProgramLayer(variants, weight, bias)
    family = families.pop()
    cls = {"conv": ProgramConv, "conv_transpose": ProgramConvTranspose}.get(family, ProgramLinear)
    return cls(variants, weight, bias)
