"""Target layers of a TorchScript graph: which nodes they are, and the modules that run them.

A conv / linear node is a target when its weight is a parameter reached through a
``prim::GetAttr`` chain. The node is replaced by a module that holds that parameter (shared
storage with the ScriptModule, so the engine's in-place updates land there) and calls the
node's own aten op with the node's own arguments, so the result is bit-for-bit what
TorchScript computes. The module subclasses ``nn.Conv*`` / ``nn.Linear`` where the op is
``f(x, W) + bias`` with the bias broadcast along a known dim, which lets the engine scale
without re-running the layer; otherwise (a bias computed at run time, ``addmm`` with
``beta != 1``) it is a generic target that the engine re-runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..shared.layer_calls import CallConv, CallConvTranspose, CallLayer, CallLinear, CallsLayerOp

CONV = {"aten::conv1d", "aten::conv2d", "aten::conv3d"}
CONV_TRANSPOSE = {"aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d"}
CONV_GENERAL = {"aten::_convolution", "aten::convolution"}
LINEAR = {"aten::linear"}
ADDMM = {"aten::addmm"}
LAYER_KINDS = CONV | CONV_TRANSPOSE | CONV_GENERAL | LINEAR | ADDMM


@dataclass
class Slot:
    """Where one argument of the op comes from when the target module runs."""

    source: str  # "const" | "dynamic" | "weight" | "weight_t" | "bias"
    value: Any = None  # the constant, or the index into the module's call arguments


@dataclass
class LayerCall:
    """One target node: the op, its argument template and the parameters it uses."""

    kind: str
    family: str  # "conv" | "conv_transpose" | "linear" | "other"
    op: Any  # OpOverload
    kw_names: tuple[str, ...]
    slots: list[Slot]
    weight_path: str
    bias_path: str | None  # a parameter, or None (no bias, or a bias computed at run time)
    groups: int
    dynamic: list[Any] = field(default_factory=list)  # graph values passed at call time, in order
    linear_in_weight: bool = True  # output = f(x, W) + module.bias with f linear in W
    bias_arg: Any = None  # the node's bias input, should it have to be passed at call time
    out_axis: int = 0  # weight axis of the output features: 0 (out, in), 1 for addmm on an (in, out) weight
    extra_params: dict[str, str] = field(default_factory=dict)  # attention: module attribute -> parameter path

    def signature(self) -> tuple:
        """Calls with the same signature are one variant of the layer module."""
        consts = tuple((s.source, repr(s.value) if s.source == "const" else s.value) for s in self.slots)
        return (self.kind, self.bias_path, consts)

    def pass_bias_at_call_time(self) -> None:
        """Another call of the same weight has another bias: this one's bias becomes an argument."""
        for i, slot in enumerate(self.slots):
            if slot.source == "bias":
                self.slots[i] = Slot("dynamic", len(self.dynamic))
                self.dynamic.append(self.bias_arg)
        self.bias_path = None
        self.linear_in_weight = False


def match_layer(kind: str, overload, args: list, read_of, is_const) -> LayerCall | None:
    """A LayerCall when the node is a conv / linear whose weight is a parameter, else None.

    ``args`` are the node inputs (graph value ids or constants); ``read_of(arg)`` is the
    parameter path an input reads (or None) and ``read_of(arg, through_t=True)`` the path
    read through one ``aten::t``; ``is_const(arg)`` says whether an input is a constant and
    ``arg.value`` its value.
    """
    if kind not in LAYER_KINDS or overload is None:
        return None
    schema = overload._schema
    names = [a.name for a in schema.arguments]
    index = {n: i for i, n in enumerate(names)}

    def const(name, default=None):
        i = index.get(name)
        if i is None:
            return default
        return args[i].value if is_const(args[i]) else _DYNAMIC

    out_axis = 0
    if kind in ADDMM:
        weight_i, bias_i = index["mat2"], index["self"]
        weight_path = read_of(args[weight_i], through_t=True)
        weight_source = "weight_t"
        if weight_path is None:  # x @ W + b with W stored (in, out): transformers' Conv1D (GPT-2)
            weight_path = read_of(args[weight_i])
            weight_source, out_axis = "weight", 1
    else:
        weight_i, bias_i = index["weight"], index.get("bias")
        weight_path = read_of(args[weight_i])
        weight_source = "weight"
    if weight_path is None:
        return None

    if kind in CONV:
        family = "conv"
    elif kind in CONV_TRANSPOSE:
        family = "conv_transpose"
    elif kind in CONV_GENERAL:
        transposed = const("transposed")
        if transposed is _DYNAMIC:
            return None
        family = "conv_transpose" if transposed else "conv"
    else:
        family = "linear"
    groups = const("groups", 1)
    if groups is _DYNAMIC or not isinstance(groups, int) or groups < 1:
        return None

    bias_path, bias_dynamic = None, False
    if bias_i is not None:
        arg = args[bias_i]
        if is_const(arg):
            if arg.value is not None:  # a constant tensor bias: pass it through
                bias_dynamic = True
        else:
            bias_path = read_of(arg)
            bias_dynamic = bias_path is None

    linear_in_weight = not bias_dynamic
    if kind in ADDMM and const("beta", 1) != 1:
        # out = beta * bias + alpha * x @ W.T: the engine subtracts the bias itself, so any
        # other beta is re-run exactly instead.
        linear_in_weight = False

    slots: list[Slot] = []
    dynamic: list[Any] = []
    for i, arg in enumerate(args):
        if i == weight_i:
            slots.append(Slot(weight_source))
        elif i == bias_i and bias_path is not None:
            slots.append(Slot("bias"))
        elif is_const(arg):
            slots.append(Slot("const", arg.value))
        else:
            slots.append(Slot("dynamic", len(dynamic)))
            dynamic.append(arg)
    kw = tuple(a.name for a in schema.arguments if a.kwarg_only)
    bias_arg = args[bias_i] if bias_i is not None else None
    return LayerCall(kind, family, overload, kw, slots, weight_path, bias_path, groups, dynamic, linear_in_weight, bias_arg,
                     out_axis)


class _Dynamic:
    def __repr__(self) -> str:
        return "<dynamic>"


_DYNAMIC = _Dynamic()


class _RunsLayerCall(CallsLayerOp):
    """Calls the node's aten op with the weight / bias plugged in (:class:`CallsLayerOp`); a
    TorchScript slot may also be the transposed weight or another parameter of the layer."""

    def _init_call(self, variants: list[LayerCall], weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        super()._init_call(variants, weight, bias)
        self.lsuv_out_axis = variants[0].out_axis
        self.lsuv_parts = 1  # set by the reader when the output is split into q / k / v

    def _arguments(self, slots, dynamic) -> list:
        args = []
        for slot in slots:
            source = slot.source
            if source == "dynamic":
                args.append(dynamic[slot.value])
            elif source == "const":
                args.append(slot.value)
            elif source == "weight":
                args.append(self.weight)
            elif source == "weight_t":
                args.append(torch.ops.aten.t.default(self.weight))
            elif source == "param":
                args.append(self.get_parameter(slot.value))
            else:
                args.append(self.bias)
        return args


class ScriptConv(_RunsLayerCall, CallConv):
    """A TorchScript convolution node."""


class ScriptConvTranspose(_RunsLayerCall, CallConvTranspose):
    """A TorchScript transposed convolution node."""


class ScriptLinear(_RunsLayerCall, CallLinear):
    """A TorchScript ``aten::linear`` / ``aten::addmm`` node."""


class ScriptLayer(_RunsLayerCall, CallLayer):
    """A conv / linear node whose output is not ``f(x, W) + self.bias``: re-run on every scaling."""


ATTENTION = "aten::_native_multi_head_attention"


def match_attention(overload, args: list, read_of, is_const) -> LayerCall | None:
    """``aten::_native_multi_head_attention`` (MultiheadAttention's fused path) with parameter weights."""
    if overload is None:
        return None
    names = [a.name for a in overload._schema.arguments]
    index = {n: i for i, n in enumerate(names)}
    paths = {name: read_of(args[index[name]]) for name in ("qkv_weight", "qkv_bias", "proj_weight", "proj_bias")}
    if paths["qkv_weight"] is None or paths["proj_weight"] is None:
        return None
    if any(not is_const(args[index[n]]) and paths[n] is None for n in ("qkv_bias", "proj_bias") if args[index[n]] is not None):
        return None  # a bias computed at run time
    roles = {"qkv_weight": "in_proj_weight", "qkv_bias": "in_proj_bias", "proj_weight": "out_proj.weight", "proj_bias": "out_proj.bias"}
    slots, dynamic = [], []
    for i, arg in enumerate(args):
        role = roles.get(names[i])
        if role is not None and paths[names[i]] is not None:
            slots.append(Slot("param", role))
        elif is_const(arg):
            slots.append(Slot("const", arg.value))
        else:
            slots.append(Slot("dynamic", len(dynamic)))
            dynamic.append(arg)
    kw = tuple(a.name for a in overload._schema.arguments if a.kwarg_only)
    extra = {roles[n]: p for n, p in paths.items() if p is not None and n in ("proj_weight", "proj_bias")}
    return LayerCall(ATTENTION, "attention", overload, kw, slots, paths["qkv_weight"], paths["qkv_bias"], 1, dynamic,
                     False, None, 0, extra)


class ScriptAttention(_RunsLayerCall, nn.Module):
    """``aten::_native_multi_head_attention`` as a module shaped like nn.MultiheadAttention
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight/bias``), so the engine fits q, k, v
    and the output projection as it does for the eager module (see lsuv_convert.lsuv.attention)."""

    lsuv_attention = True
    _qkv_same_embed_dim = True
    batch_first = True

    def __init__(self, variants, weight, bias, extra):
        nn.Module.__init__(self)
        self.in_proj_weight = weight
        self.register_parameter("in_proj_bias", bias)
        self.out_proj = nn.Module()
        self.out_proj.weight = extra["out_proj.weight"]
        self.out_proj.register_parameter("bias", extra.get("out_proj.bias"))
        self.embed_dim = weight.shape[1]
        self.groups = 1
        first = variants[0]
        self.lsuv_source_kind = first.kind
        self._variants = [(c.slots, c.op, len(c.slots) - len(c.kw_names), c.kw_names) for c in variants]

    @property
    def weight(self) -> torch.Tensor:
        return self.in_proj_weight

    @property
    def bias(self):
        return self.in_proj_bias


def scales_without_rerun(variants: list[LayerCall]) -> bool:
    """Whether every call of the weight is ``f(x, W) + bias`` of one family and layout: the layer is
    then a conv / linear module, whose output the engine splits into q / k / v when it is packed."""
    return (len({c.family for c in variants}) == 1 and variants[0].family != "attention"
            and len({c.out_axis for c in variants}) == 1 and all(c.linear_in_weight for c in variants))


def build_layer(variants: list[LayerCall], weight: nn.Parameter, bias: nn.Parameter | None,
                extra: dict | None = None) -> nn.Module:
    """The module for one weight; a conv / linear subclass when every call is ``f(x, W) + bias``."""
    families = {c.family for c in variants}
    if families == {"attention"}:
        return ScriptAttention(variants, weight, bias, extra or {})
    if not scales_without_rerun(variants):
        return ScriptLayer(variants, weight, bias)
    family = families.pop()
    if family == "conv":
        return ScriptConv(variants, weight, bias)
    if family == "conv_transpose":
        return ScriptConvTranspose(variants, weight, bias)
    return ScriptLinear(variants, weight, bias)
