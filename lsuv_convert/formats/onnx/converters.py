"""onnx2torch converters for the op versions torch's default (dynamo) exporter emits at opset 18+.

onnx2torch 1.5.15 stops at opset 17: ReduceMean-18 (axes became an input), Pad-18/19 (axes
input, wrap mode), Split-18 (num_outputs), Resize-18/19 and Reshape with ``allowzero=1`` are
missing, so no torchvision model exported by the dynamo exporter converts. They are added
here through onnx2torch's public registry (``add_converter``), not by forking it. Versions that
only widened the accepted types reuse onnx2torch's own converter for the previous version.

Each module follows the ONNX operator spec; the test suite checks them against onnxruntime.
Importing this module registers the converters (once: Python caches the import).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .deferred import import_onnx2torch

import_onnx2torch()  # before any onnx2torch import: keeps torchvision out of the process

from onnx2torch.node_converters import add_converter, get_converter  # noqa: E402 - after import_onnx2torch() above
from onnx2torch.onnx_graph import OnnxGraph  # noqa: E402 - after import_onnx2torch() above
from onnx2torch.onnx_node import OnnxNode  # noqa: E402 - after import_onnx2torch() above
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value, onnx_mapping_from_node  # noqa: E402 - after import_onnx2torch() above
from torch import nn  # noqa: E402 - after import_onnx2torch() above

# Nodes onnx2torch has a converter for but refuses (Reshape allowzero=1) or converts wrongly
# (Reduce* with an axes attribute: negative axes) are moved to this private domain in the working
# copy handed to onnx2torch (see convert.py); the saved model is untouched.
FIX_DOMAIN = "lsuv_convert_fix"  # no dots: onnx2torch prefixes module names with the domain


def _register(operation_type: str, version: int, converter, domain: str = "") -> None:
    """Add ``converter`` unless onnx2torch (or an earlier import) already has one for this version."""
    try:
        get_converter(operation_type=operation_type, version=version, domain=domain)
        return
    except NotImplementedError:
        pass
    add_converter(operation_type=operation_type, version=version, domain=domain)(converter)


def _const_list(name: str, graph: OnnxGraph) -> Optional[list]:
    """Value of a constant input (initializer or Constant node) as a list, or None if computed."""
    if not name:
        return None
    try:
        value = get_const_value(name, graph)
    except KeyError:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _static_mapping(node: OnnxNode, n_dynamic: int) -> OnnxMapping:
    """Mapping that passes only the first ``n_dynamic`` inputs to the module."""
    return OnnxMapping(inputs=tuple(node.input_values[:n_dynamic]), outputs=node.output_values)


# ---------------------------------------------------------------- Reduce*-18 (axes is an input)


def _normalize_axes(axes, rank: int) -> list[int]:
    return sorted({int(a) + rank if int(a) < 0 else int(a) for a in axes})


class OnnxReduce18(nn.Module):
    """ReduceX-18/20: ``axes`` given at conversion (static) or as a second input (dynamic)."""

    def __init__(self, op: str, keepdims: bool, noop_with_empty_axes: bool, axes: Optional[list] = None):
        super().__init__()
        self.op = op
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes
        self.axes = axes

    def forward(self, x: torch.Tensor, axes: Optional[torch.Tensor] = None) -> torch.Tensor:
        axes_list = self.axes if axes is None else axes.tolist()
        if not axes_list:
            if self.noop_with_empty_axes:  # reduce over no axis: only the elementwise part remains
                return self._elementwise(x)
            dims = list(range(x.dim()))
        else:
            dims = _normalize_axes(axes_list, x.dim())
        if not dims:  # rank-0 input
            return self._reduce(x.unsqueeze(0), [0], False)
        return self._reduce(x, dims, self.keepdims)

    def _elementwise(self, x: torch.Tensor) -> torch.Tensor:
        if self.op in ("ReduceL1", "ReduceL2"):
            return torch.abs(x)
        if self.op == "ReduceSumSquare":
            return x * x
        if self.op == "ReduceLogSum":
            return torch.log(x)
        return x

    def _reduce(self, x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
        op = self.op
        if op == "ReduceMean":
            return torch.mean(x, dim=dims, keepdim=keep)
        if op == "ReduceSum":
            return torch.sum(x, dim=dims, keepdim=keep)
        if op == "ReduceMax":
            return torch.amax(x, dim=dims, keepdim=keep)
        if op == "ReduceMin":
            return torch.amin(x, dim=dims, keepdim=keep)
        if op == "ReduceProd":
            for d in sorted(dims, reverse=True):
                x = torch.prod(x, dim=d, keepdim=keep)
            return x
        if op == "ReduceL1":
            return torch.sum(torch.abs(x), dim=dims, keepdim=keep)
        if op == "ReduceL2":
            return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))
        if op == "ReduceSumSquare":
            return torch.sum(x * x, dim=dims, keepdim=keep)
        if op == "ReduceLogSum":
            return torch.log(torch.sum(x, dim=dims, keepdim=keep))
        if op == "ReduceLogSumExp":
            return torch.logsumexp(x, dim=dims, keepdim=keep)
        raise NotImplementedError(op)


def _convert_reduce18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = node.attributes
    keepdims = bool(attrs.get("keepdims", 1))
    noop = bool(attrs.get("noop_with_empty_axes", 0))
    axes_name = node.input_values[1] if len(node.input_values) > 1 else ""
    if not axes_name:
        module = OnnxReduce18(node.operation_type, keepdims, noop, axes=[])
        return OperationConverterResult(module, _static_mapping(node, 1))
    axes = _const_list(axes_name, graph)
    if axes is not None:
        module = OnnxReduce18(node.operation_type, keepdims, noop, axes=axes)
        return OperationConverterResult(module, _static_mapping(node, 1))
    module = OnnxReduce18(node.operation_type, keepdims, noop)
    return OperationConverterResult(module, onnx_mapping_from_node(node))


for _op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"):
    _register(_op, 18, _convert_reduce18)
for _op in ("ReduceMax", "ReduceMin"):  # 20 only added bool support
    _register(_op, 20, _convert_reduce18)


def _convert_reduce_attribute_axes(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Reduce*-1..13 (axes attribute), in place of onnx2torch's, which mishandles negative axes."""
    attrs = node.attributes
    module = OnnxReduce18(node.operation_type, bool(attrs.get("keepdims", 1)), False, axes=list(attrs.get("axes", [])))
    return OperationConverterResult(module, _static_mapping(node, 1))


for _op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceSum"):
    _register(_op, 1, _convert_reduce_attribute_axes, domain=FIX_DOMAIN)


# ---------------------------------------------------------------- Pad-18/19/21 (axes input, wrap mode)


def _source_index(n: int, begin: int, end: int, mode: str, device) -> torch.Tensor:
    """Indices into an axis of length ``n`` that produce its padded (or cropped) version."""
    pos = torch.arange(-begin, n + end, device=device)
    if mode == "edge":
        return pos.clamp(0, n - 1)
    if mode == "wrap":
        return torch.remainder(pos, n)
    # reflect: mirror without repeating the edge element (numpy "reflect")
    if n == 1:
        return torch.zeros_like(pos)
    period = 2 * (n - 1)
    pos = torch.remainder(pos, period)
    return torch.where(pos < n, pos, period - pos)


class OnnxPad18(nn.Module):
    """Pad-18+: pads for an optional subset of ``axes``; constant / reflect / edge / wrap."""

    def __init__(self, mode: str, pads: Optional[list] = None, axes: Optional[list] = None, value=None):
        super().__init__()
        self.mode = mode
        self.pads = pads
        self.axes = axes
        self.value = value

    def forward(self, x: torch.Tensor, pads: Optional[torch.Tensor] = None,
                constant_value: Optional[torch.Tensor] = None, axes: Optional[torch.Tensor] = None) -> torch.Tensor:
        pad_list = self.pads if pads is None else pads.tolist()
        axes_list = self.axes if axes is None else axes.tolist()
        rank = x.dim()
        if axes_list is None:
            axes_list = list(range(rank))
        axes_list = [int(a) + rank if int(a) < 0 else int(a) for a in axes_list]
        k = len(axes_list)
        if len(pad_list) != 2 * k:
            raise ValueError(f"Pad: {len(pad_list)} pads for {k} axes")
        per_axis = {axis: (int(pad_list[i]), int(pad_list[k + i])) for i, axis in enumerate(axes_list)}
        if self.mode == "constant":
            value = self.value if constant_value is None else constant_value.item()
            flat = []
            for axis in reversed(range(rank)):
                flat.extend(per_axis.get(axis, (0, 0)))
            return nn.functional.pad(x, flat, mode="constant", value=0.0 if value is None else value)
        for axis, (begin, end) in per_axis.items():
            if begin or end:
                index = _source_index(x.shape[axis], begin, end, self.mode, x.device)
                x = torch.index_select(x, axis, index)
        return x


def _convert_pad18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise NotImplementedError(f'Pad mode "{mode}" is not implemented')
    names = list(node.input_values) + [""] * (4 - len(node.input_values))
    pads = _const_list(names[1], graph)
    value = _const_list(names[2], graph) if names[2] else [None]
    axes = _const_list(names[3], graph) if names[3] else None
    static = pads is not None and value is not None and (not names[3] or axes is not None)
    if static:
        module = OnnxPad18(mode, pads=pads, axes=axes, value=value[0] if value else None)
        return OperationConverterResult(module, _static_mapping(node, 1))
    return OperationConverterResult(OnnxPad18(mode), onnx_mapping_from_node(node))


for _version in (18, 19, 21):
    _register("Pad", _version, _convert_pad18)


# ---------------------------------------------------------------- Split-18 (num_outputs)


class OnnxSplit18(nn.Module):
    """Split-18: explicit ``split`` sizes, or ``num_outputs`` pieces of ceil(n / num_outputs)."""

    def __init__(self, axis: int, num_outputs: int, split: Optional[list] = None):
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs
        self.split = split

    def forward(self, x: torch.Tensor, split: Optional[torch.Tensor] = None):
        sizes = self.split if split is None else split.tolist()
        if sizes is None:
            n = x.shape[self.axis]
            chunk = math.ceil(n / self.num_outputs)
            sizes = [min(chunk, n - i * chunk) for i in range(self.num_outputs)]
        return tuple(torch.split(x, [int(s) for s in sizes], dim=self.axis))


def _convert_split18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    axis = node.attributes.get("axis", 0)
    num_outputs = node.attributes.get("num_outputs", len(node.output_values))
    split_name = node.input_values[1] if len(node.input_values) > 1 else ""
    if not split_name:
        return OperationConverterResult(OnnxSplit18(axis, num_outputs), _static_mapping(node, 1))
    split = _const_list(split_name, graph)
    if split is not None:
        return OperationConverterResult(OnnxSplit18(axis, num_outputs, split), _static_mapping(node, 1))
    return OperationConverterResult(OnnxSplit18(axis, num_outputs), onnx_mapping_from_node(node))


_register("Split", 18, _convert_split18)


# ---------------------------------------------------------------- Reshape (allowzero=1), -19, -21


class OnnxReshapeAllowZero(nn.Module):
    """Reshape with both ``allowzero`` semantics (0 = copy the input dim, or a literal 0)."""

    def __init__(self, allowzero: bool):
        super().__init__()
        self.allowzero = allowzero

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        dims = [int(d) for d in shape.tolist()]
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return torch.reshape(x, dims)


def _convert_reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    allowzero = bool(node.attributes.get("allowzero", 0))
    return OperationConverterResult(OnnxReshapeAllowZero(allowzero), onnx_mapping_from_node(node))


_register("Reshape", 1, _convert_reshape, domain=FIX_DOMAIN)
for _version in (19, 21):
    _register("Reshape", _version, _convert_reshape)


# ---------------------------------------------------------------- Resize-18/19


def _source_coords(mode: str, out_size: int, in_size: int, scale: float, device) -> torch.Tensor:
    """ONNX coordinate_transformation_mode: output index -> fractional input coordinate."""
    y = torch.arange(out_size, device=device, dtype=torch.float64)
    out_float = scale * in_size
    if mode == "align_corners":
        return torch.zeros_like(y) if out_size == 1 else y * (in_size - 1) / (out_size - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "pytorch_half_pixel":
        return torch.full_like(y, -0.5) if out_size == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_size / out_float
        offset = in_size / 2 * (1 - adjustment)
        return offset + (y + 0.5) / scale - 0.5
    raise NotImplementedError(f'Resize coordinate_transformation_mode "{mode}" is not implemented')


def _nearest_index(x: torch.Tensor, mode: str) -> torch.Tensor:
    frac = x - torch.floor(x)
    if mode == "floor":
        idx = torch.floor(x)
    elif mode == "ceil":
        idx = torch.ceil(x)
    elif mode == "round_prefer_ceil":
        idx = torch.where(frac >= 0.5, torch.ceil(x), torch.floor(x))
    else:  # round_prefer_floor
        idx = torch.where(frac > 0.5, torch.ceil(x), torch.floor(x))
    return idx.long()


def _cubic_weights(t: torch.Tensor, a: float) -> torch.Tensor:
    """Keys cubic convolution weights for the 4 taps at offsets -1, 0, 1, 2 from floor(x)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


class OnnxResize18(nn.Module):
    """Resize-18/19 for nearest / linear / cubic, axis by axis, exactly as the ONNX spec says."""

    def __init__(self, mode: str, coord_mode: str, nearest_mode: str, cubic_coeff_a: float,
                 exclude_outside: bool, axes: Optional[list], keep_aspect_ratio_policy: str):
        super().__init__()
        self.mode = mode
        self.coord_mode = coord_mode
        self.nearest_mode = nearest_mode
        self.cubic_coeff_a = cubic_coeff_a
        self.exclude_outside = exclude_outside
        self.axes = axes
        self.policy = keep_aspect_ratio_policy

    def forward(self, x: torch.Tensor, roi: Optional[torch.Tensor] = None,
                scales: Optional[torch.Tensor] = None, sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        rank = x.dim()
        axes = list(range(rank)) if not self.axes else [a + rank if a < 0 else a for a in self.axes]
        in_sizes = [x.shape[a] for a in axes]
        if sizes is not None and sizes.numel():
            wanted = [int(s) for s in sizes.tolist()]
            ratios = [w / n for w, n in zip(wanted, in_sizes)]
            if self.policy in ("not_larger", "not_smaller"):
                pick = min if self.policy == "not_larger" else max
                scale = pick(ratios)
                ratios = [scale] * len(axes)
                wanted = [int(math.floor(scale * n + 0.5)) for n in in_sizes]
            out_sizes = wanted
        elif scales is not None and scales.numel():
            ratios = [float(s) for s in scales.tolist()]
            out_sizes = [int(math.floor(n * r)) for n, r in zip(in_sizes, ratios)]
        else:
            raise ValueError("Resize needs scales or sizes")
        for axis, n_in, n_out, ratio in zip(axes, in_sizes, out_sizes, ratios):
            if n_in == n_out and ratio == 1.0:
                continue
            x = self._resize_axis(x, axis, n_in, n_out, ratio)
        return x

    def _resize_axis(self, x: torch.Tensor, axis: int, n_in: int, n_out: int, scale: float) -> torch.Tensor:
        coords = _source_coords(self.coord_mode, n_out, n_in, scale, x.device)
        if self.mode == "nearest":
            index = _nearest_index(coords, self.nearest_mode).clamp(0, n_in - 1)
            return torch.index_select(x, axis, index)
        base = torch.floor(coords)
        t = coords - base
        if self.mode == "linear":
            offsets, weights = [0, 1], torch.stack([1 - t, t], dim=-1)
        else:  # cubic
            offsets, weights = [-1, 0, 1, 2], _cubic_weights(t, self.cubic_coeff_a)
        taps = torch.stack([base.long() + o for o in offsets], dim=-1)  # (n_out, taps)
        if self.exclude_outside:
            inside = (taps >= 0) & (taps < n_in)
            weights = weights * inside
            weights = weights / weights.sum(dim=-1, keepdim=True)
        taps = taps.clamp(0, n_in - 1)
        gathered = torch.index_select(x, axis, taps.reshape(-1))
        shape = list(x.shape)
        shape[axis: axis + 1] = [n_out, len(offsets)]
        gathered = gathered.reshape(shape)
        w_shape = [1] * len(shape)
        w_shape[axis], w_shape[axis + 1] = n_out, len(offsets)
        weights = weights.to(torch.float32 if x.dtype == torch.float16 else x.dtype).reshape(w_shape)
        out = (gathered.to(weights.dtype) * weights).sum(dim=axis + 1)
        return out.to(x.dtype)


def _convert_resize18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = node.attributes
    mode = attrs.get("mode", "nearest")
    coord_mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    if coord_mode == "tf_crop_and_resize":
        raise NotImplementedError('Resize with coordinate_transformation_mode "tf_crop_and_resize" is not implemented')
    if attrs.get("antialias", 0) and mode != "nearest":
        raise NotImplementedError("Resize with antialias=1 is not implemented")
    if mode not in ("nearest", "linear", "cubic"):
        raise NotImplementedError(f'Resize mode "{mode}" is not implemented')
    module = OnnxResize18(
        mode=mode,
        coord_mode=coord_mode,
        nearest_mode=attrs.get("nearest_mode", "round_prefer_floor"),
        cubic_coeff_a=attrs.get("cubic_coeff_a", -0.75),
        exclude_outside=bool(attrs.get("exclude_outside", 0)),
        axes=attrs.get("axes", None),
        keep_aspect_ratio_policy=attrs.get("keep_aspect_ratio_policy", "stretch"),
    )
    return OperationConverterResult(module, onnx_mapping_from_node(node))


for _version in (18, 19):
    _register("Resize", _version, _convert_resize18)


# ---------------------------------------------------------------- versions that only widened types

_SAME_SEMANTICS = {  # new version -> onnx2torch's converter for the previous version
    ("Cast", 19): 13, ("Cast", 21): 13,
    ("Identity", 19): 16, ("Identity", 21): 16,
    ("Shape", 19): 15, ("Shape", 21): 15,
    ("Constant", 19): 13, ("Constant", 21): 13,
    ("Squeeze", 21): 13, ("Unsqueeze", 21): 13,
    ("Transpose", 21): 13, ("Flatten", 21): 13,
    ("Equal", 19): 13,
}
for (_op, _version), _previous in _SAME_SEMANTICS.items():
    _register(_op, _version, get_converter(operation_type=_op, version=_previous))


# ---------------------------------------------------------------- LayerNormalization-17 (any axis, broadcast scale)


class OnnxLayerNormalization(nn.Module):
    """LayerNormalization-17: normalize over the axes from ``axis`` on, whatever the input shape
    (onnx2torch builds nn.LayerNorm from inferred shapes, ``[0]`` for a dynamic dimension);
    statistics in float32 at least (``stash_type``), scale and bias broadcast as in the spec."""

    def __init__(self, axis: int, epsilon: float):
        super().__init__()
        self.axis = axis
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        dims = list(range(axis, x.dim()))
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = work.mean(dim=dims, keepdim=True)
        var = ((work - mean) ** 2).mean(dim=dims, keepdim=True)
        out = ((work - mean) / torch.sqrt(var + self.epsilon)).to(x.dtype) * scale
        return out + bias if bias is not None else out


def _convert_layer_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = node.attributes
    module = OnnxLayerNormalization(int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5)))
    return OperationConverterResult(module, OnnxMapping(inputs=tuple(node.input_values[:3]), outputs=node.output_values[:1]))


_register("LayerNormalization", 1, _convert_layer_norm, domain=FIX_DOMAIN)


# ---------------------------------------------------------------- Gemm-1..7 and Dropout-1..9 (old exporters)


def _convert_old_gemm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Gemm before opset 9: ``broadcast`` only allowed what torch broadcasting does anyway."""
    return get_converter(operation_type="Gemm", version=9)(node, graph)


class OnnxDropoutInference(nn.Module):
    """Dropout in inference (what ``is_test`` and onnxruntime mean): the input, and an all-true mask."""

    def __init__(self, with_mask: bool):
        super().__init__()
        self.with_mask = with_mask

    def forward(self, x: torch.Tensor):
        if self.with_mask:
            return x, torch.ones_like(x, dtype=torch.bool)
        return x


def _convert_old_dropout(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    outputs = tuple(o for o in node.output_values if o)
    return OperationConverterResult(OnnxDropoutInference(len(outputs) > 1), OnnxMapping(inputs=node.input_values[:1], outputs=outputs))


_register("Gemm", 1, _convert_old_gemm, domain=FIX_DOMAIN)
_register("Dropout", 1, _convert_old_dropout, domain=FIX_DOMAIN)


# ---------------------------------------------------------------- Flatten (always 2-D, any rank)


class OnnxFlatten2d(nn.Module):
    """Flatten as the spec says: (prod(dims[:axis]), prod(dims[axis:])), also for rank < axis + 1
    (onnx2torch's torch.flatten(start_dim=axis) fails on a 1-D input with axis=1)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        outer = 1
        for d in x.shape[:axis]:
            outer *= d
        return x.reshape(outer, -1) if x.numel() else x.reshape(outer, math.prod(x.shape[axis:]))


def _convert_flatten(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(OnnxFlatten2d(int(node.attributes.get("axis", 1))), _static_mapping(node, 1))


_register("Flatten", 1, _convert_flatten, domain=FIX_DOMAIN)
