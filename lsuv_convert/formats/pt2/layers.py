"""The modules that stand for a program's conv / linear calls: :mod:`lsuv_convert.formats.shared.layer_calls`
modules (the TorchScript plug-in uses them too) with this format's argument slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..shared.layer_calls import CallConv, CallConvTranspose, CallLayer, CallLinear, CallsLayerOp

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


class _CallsNode(CallsLayerOp):
    """Calls the node's aten op (:class:`CallsLayerOp`) with slots ``("weight",)``, ``("bias",)``,
    ``("const", value)`` or ``("dynamic", i)``."""

    def _arguments(self, slots, dynamic) -> list:
        return [self.weight if s[0] == "weight" else self.bias if s[0] == "bias"
                else dynamic[s[1]] if s[0] == "dynamic" else s[1] for s in slots]


class ProgramConv(_CallsNode, CallConv):
    """A program's convolution call."""


class ProgramConvTranspose(_CallsNode, CallConvTranspose):
    """A program's transposed convolution call."""


class ProgramLinear(_CallsNode, CallLinear):
    """A program's ``aten.linear`` call."""


class ProgramLayer(_CallsNode, CallLayer):
    """A call whose output is not ``f(x, W) + self.bias``: re-run on every scaling."""


def build_layer(variants: list[LayerCall], weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Module:
    families = {c.family for c in variants}
    if len(families) > 1 or not all(c.linear_in_weight for c in variants):
        return ProgramLayer(variants, weight, bias)
    family = families.pop()
    cls = {"conv": ProgramConv, "conv_transpose": ProgramConvTranspose}.get(family, ProgramLinear)
    return cls(variants, weight, bias)
