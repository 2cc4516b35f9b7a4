"""One converter per Caffe layer type: checks its parameters and shapes the way Caffe's
``LayerSetUp`` / ``Reshape`` do, and emits fx nodes with Caffe's TEST-phase semantics.

A converter takes ``(ctx, bottoms)`` and returns one :class:`Blob` per top. Shapes carry
``None`` for the batch axis, which Caffe lets change freely.
"""

from __future__ import annotations

import math
import operator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import modules as M
from .context import Blob, LayerContext

CONVERTERS: dict[str, Callable] = {}

# Types whose output nothing on a target's path can use: known, but only ever left out.
TAIL_ONLY = frozenset({"PriorBox", "DetectionOutput", "DetectionEvaluate", "Accuracy", "Silence"})


def unsupported_here(type_name: str) -> str:
    """Why a layer of ``type_name`` on a path to a target can't be built (one line)."""
    if type_name in TAIL_ONLY:
        return f"a {type_name} layer can only come after the last Convolution/InnerProduct (it is then left out)"
    return f"unknown layer type {type_name!r}"


def converter(*types: str):
    def register(fn):
        for t in types:
            CONVERTERS[t] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _axis(ctx: LayerContext, axis: int, ndim: int, what: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise ctx.error(f"{what} {axis} is out of range for a {ndim}-D input")
    return axis % ndim


def _known(ctx: LayerContext, shape: tuple, axes, why: str) -> None:
    if any(shape[a] is None for a in axes):
        raise ctx.error(f"{why} would depend on the batch size, which Caffe leaves free; not supported")


def _bottoms(ctx: LayerContext, bottoms: list[Blob], count: int | None = None, at_least: int = 1) -> None:
    n = len(bottoms)
    if count is not None and n != count:
        raise ctx.error(f"{ctx.layer.type} takes {count} bottom(s), {n} given")
    if n < at_least:
        raise ctx.error(f"{ctx.layer.type} needs at least {at_least} bottom(s)")


def _same_shapes(ctx: LayerContext, bottoms: list[Blob]) -> None:
    first = bottoms[0].shape
    for name, b in zip(ctx.layer.bottom[1:], bottoms[1:]):
        if b.shape != first:
            raise ctx.error(f"bottom {name!r} has shape {_fmt(b.shape)}, {ctx.layer.bottom[0]!r} has {_fmt(first)}")


def _fmt(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def _filler_or(field_owner, name: str, constant: float):
    return getattr(field_owner, name) if field_owner.HasField(name) else constant


def _spatial(ctx: LayerContext, p, n: int, name: str, default: int | None, repeated: bool = True) -> list[int]:
    """Caffe's kernel/stride/pad: ``name_h``/``name_w`` (2-D only) or one value per axis (or one for all)."""
    field_name = "kernel_size" if name == "kernel" else name
    h, w = f"{name}_h", f"{name}_w"
    given = len(getattr(p, field_name)) > 0 if repeated else p.HasField(field_name)
    if p.HasField(h) or p.HasField(w):
        if given:
            raise ctx.error(f"give either {field_name} or {h}/{w}, not both")
        if n != 2:
            raise ctx.error(f"{h}/{w} are for 2-D inputs only")
        if name == "kernel" and not (p.HasField(h) and p.HasField(w)):
            raise ctx.error("give both kernel_h and kernel_w")
        fallback = 1 if name == "stride" else 0
        return [int(getattr(p, a)) if p.HasField(a) else fallback for a in (h, w)]
    if not given:
        if default is None:
            raise ctx.error(f"{field_name} is required")
        return [default] * n
    values = [int(v) for v in getattr(p, field_name)] if repeated else [int(getattr(p, field_name))]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ctx.error(f"{field_name} has {len(values)} values for {n} spatial axes")
    return values


# ---------------------------------------------------------------------------------------------
# layers with LSUV targets
# ---------------------------------------------------------------------------------------------

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_DECONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


DEPTHWISE_TYPES = ("ConvolutionDepthwise", "DepthwiseConvolution")


@converter("Convolution", "Deconvolution", *DEPTHWISE_TYPES)
def convolution(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    """Convolution and Deconvolution; the depthwise forks' types are Convolution with group =
    channels (their weight blob is Convolution's, (num_output, 1, kh, kw))."""
    p = ctx.layer.convolution_param
    deconv = ctx.layer.type == "Deconvolution"
    _bottoms(ctx, bottoms)
    if len(ctx.layer.top) != len(bottoms):
        raise ctx.error(f"{ctx.layer.type} needs one top per bottom")
    _same_shapes(ctx, bottoms)
    shape = bottoms[0].shape
    if len(shape) < 3:
        raise ctx.error(f"needs an input with spatial axes, got shape {_fmt(shape)}")
    if _axis(ctx, p.axis, len(shape)) != 1:
        raise ctx.error("only axis 1 (channels) is supported")
    n = len(shape) - 2
    if n not in _CONV:
        raise ctx.error(f"{n}-D convolution is not supported")
    _known(ctx, shape, range(1, len(shape)), "the shape")
    channels = shape[1]
    kernel = _spatial(ctx, p, n, "kernel", None)
    stride = _spatial(ctx, p, n, "stride", 1)
    pad = _spatial(ctx, p, n, "pad", 0)
    dilation = list(p.dilation) or [1]
    if len(dilation) == 1:
        dilation = dilation * n
    if len(dilation) != n:
        raise ctx.error(f"dilation has {len(dilation)} values for {n} spatial axes")
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise ctx.error("kernel, stride and dilation must be positive")
    outputs, group = int(p.num_output), int(p.group)
    if ctx.layer.type in DEPTHWISE_TYPES:
        if p.HasField("group") and group not in (1, channels):
            raise ctx.error(f"a depthwise convolution has group = channels ({channels}), not {group}")
        group = channels
    if outputs <= 0:
        raise ctx.error("num_output must be positive")
    if group <= 0 or channels % group or outputs % group:
        raise ctx.error(f"group {group} must divide both the input channels ({channels}) and num_output ({outputs})")
    sizes = []
    for size, k, s, pd, d in zip(shape[2:], kernel, stride, pad, dilation):
        extent = d * (k - 1) + 1
        out = s * (size - 1) + extent - 2 * pd if deconv else (size + 2 * pd - extent) // s + 1
        if out <= 0:
            raise ctx.error(f"kernel {kernel} with pad {pad}, stride {stride}, dilation {dilation} does not fit "
                            f"the input {_fmt(shape)}")
        sizes.append(out)
    cls = (_DECONV if deconv else _CONV)[n]
    in_ch, out_ch = channels, outputs
    # Built on the meta device (no memory, no init): ctx.attach puts the real blobs in.
    module = cls(in_ch, out_ch, tuple(kernel), stride=tuple(stride), padding=tuple(pad), dilation=tuple(dilation),
                 groups=group, bias=p.bias_term, device="meta")
    w_shape = tuple(module.weight.shape)  # conv (out, in/g, k...), deconv (in, out/g, k...): Caffe's layouts
    roles, shapes, fillers, attrs = _blob_and_bias(p, "weight", w_shape, _filler_or(p, "weight_filler", 0.0), "weight",
                                                   (outputs,))
    values = ctx.initial_blobs(roles, shapes, fillers)
    path = ctx.add_module(module)
    shared = ctx.attach(module, path, attrs, values, shapes)
    ctx.target(path, shared[0])
    out_shape = (shape[0], outputs, *sizes)
    return [Blob(ctx.call_module(path, b.node), out_shape) for b in bottoms]


@converter("InnerProduct")
def inner_product(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.inner_product_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = _axis(ctx, p.axis, len(x.shape))
    _known(ctx, x.shape, range(axis, len(x.shape)), "the inner product size")
    k = math.prod(x.shape[axis:])
    outputs = int(p.num_output)
    if outputs <= 0:
        raise ctx.error("num_output must be positive")
    module = nn.Linear(k, outputs, bias=p.bias_term, device="meta")
    w_shape = (k, outputs) if p.transpose else (outputs, k)
    roles, shapes, fillers, attrs = _blob_and_bias(p, "weight", w_shape, _filler_or(p, "weight_filler", 0.0), "weight",
                                                   (outputs,))
    layouts = ["transpose" if p.transpose else "same"] + ["same"] * (len(roles) - 1)
    values = ctx.initial_blobs(roles, shapes, fillers)
    if p.transpose:
        values[0] = values[0].t().contiguous()
    path = ctx.add_module(module)
    shared = ctx.attach(module, path, attrs, values, shapes, layouts)
    ctx.target(path, shared[0])
    node = x.node
    if axis != len(x.shape) - 1:
        node = ctx.call(torch.flatten, node, axis)
    return [Blob(ctx.call_module(path, node), (*x.shape[:axis], outputs))]


# ---------------------------------------------------------------------------------------------
# pooling and normalisation
# ---------------------------------------------------------------------------------------------

@converter("Pooling")
def pooling(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.pooling_param
    _bottoms(ctx, bottoms, 1)
    with_mask = len(ctx.layer.top) == 2
    if len(ctx.layer.top) > 2 or (with_mask and p.pool != 0):
        raise ctx.error("Pooling has one top, or two for MAX pooling (output and mask)")
    if with_mask and p.global_pooling:
        raise ctx.error("global MAX pooling with a mask top is not supported")
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"Caffe pools 4-D blobs, got shape {_fmt(x.shape)}")
    method = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}[p.pool]
    if method == "STOCHASTIC":
        raise ctx.error("STOCHASTIC pooling is not supported")
    _known(ctx, x.shape, (1, 2, 3), "the pooling geometry")
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise ctx.error("with global_pooling the kernel size can't be given")
        if _spatial(ctx, p, 2, "pad", 0, repeated=False) != [0, 0] or \
                _spatial(ctx, p, 2, "stride", 1, repeated=False) != [1, 1]:
            raise ctx.error("with global_pooling only pad = 0 and stride = 1 are allowed")
        fn = M.global_max_pool if method == "MAX" else M.global_ave_pool
        return [Blob(ctx.call(fn, x.node), (*x.shape[:2], 1, 1))]
    kernel = _spatial(ctx, p, 2, "kernel", None, repeated=False)
    stride = _spatial(ctx, p, 2, "stride", 1, repeated=False)
    pad = _spatial(ctx, p, 2, "pad", 0, repeated=False)
    ceil = p.ceil_mode if p.HasField("ceil_mode") else p.round_mode == 0
    return _pool(ctx, x, method, kernel, stride, pad, ceil, with_mask)


def _pool(ctx: LayerContext, x: Blob, method: str, kernel, stride, pad, ceil: bool, with_mask: bool = False) -> list[Blob]:
    """2-D MAX/AVE pooling with Caffe's output size and windows (also SPP's levels)."""
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride):
        raise ctx.error("kernel and stride must be positive")
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise ctx.error(f"pad {pad} must be smaller than the kernel {kernel}")
    in_size = x.shape[2:]
    out_size = [caffe_pooled_size(n, k, s, pd, ceil, any(pad)) for n, k, s, pd in zip(in_size, kernel, stride, pad)]
    for n, _k, s, pd, o in zip(in_size, kernel, stride, pad, out_size):
        if o <= 0:
            raise ctx.error(f"kernel {kernel} does not fit the input {_fmt(x.shape)}")
        if (o - 1) * s - pd >= n:
            raise ctx.error(f"the last pooling window starts outside the input {_fmt(x.shape)} "
                            "(Caffe would output -FLT_MAX there); not supported")
    torch_size = [torch_pooled_size(n, k, s, pd, ceil) for n, k, s, pd in zip(in_size, kernel, stride, pad)]
    out_shape = (*x.shape[:2], *out_size)
    if all(2 * pd <= k for pd, k in zip(pad, kernel)) and torch_size == out_size:
        if with_mask:  # SegNet's mask: the argmax's flat index h * W + w in its input plane, as Caffe writes it
            pair = ctx.call(M.max_pool_with_mask, x.node, tuple(kernel), tuple(stride), tuple(pad), ceil)
            return [Blob(ctx.call(operator.getitem, pair, i), out_shape) for i in (0, 1)]
        if method == "MAX":
            node = ctx.call(F.max_pool2d, x.node, tuple(kernel), tuple(stride), tuple(pad), ceil_mode=ceil)
        else:
            node = ctx.call(F.avg_pool2d, x.node, tuple(kernel), tuple(stride), tuple(pad), ceil_mode=ceil,
                            count_include_pad=True)
        return [Blob(node, out_shape)]
    if with_mask:
        raise ctx.error("a mask top is supported only where the windows stay within half a kernel of padding")
    module = M.CaffePooling(method, kernel, stride, pad, in_size, out_size)
    path = ctx.add_module(module)
    return [Blob(ctx.call_module(path, x.node), out_shape)]


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool, padded: bool) -> int:
    """Caffe's PoolingLayer::Reshape: ceil (or floor) rounding, then the last window is
    dropped if it would start in the padding (only when some padding is set)."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def torch_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@converter("LRN")
def lrn(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.lrn_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    size = int(p.local_size)
    if size % 2 == 0 or size <= 0:
        raise ctx.error(f"local_size must be odd and positive, got {size}")
    if len(x.shape) != 4:
        raise ctx.error(f"LRN needs a 4-D input, got {_fmt(x.shape)}")
    if p.norm_region == 0:  # ACROSS_CHANNELS: alpha / size * sum of squares, plus k
        node = ctx.call(F.local_response_norm, x.node, size, alpha=p.alpha, beta=p.beta, k=p.k)
    else:
        node = ctx.call(M.lrn_within_channel, x.node, size, p.alpha, p.beta)
    return [Blob(node, x.shape)]


@converter("BatchNorm")
def batch_norm(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.batch_norm_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) < 2:
        raise ctx.error(f"BatchNorm needs an input with channels, got {_fmt(x.shape)}")
    _known(ctx, x.shape, (1,), "the channel count")
    channels = x.shape[1]
    use_global = p.use_global_stats if p.HasField("use_global_stats") else ctx.builder.parsed.phase == 1
    module = M.CaffeBatchNorm(channels, p.eps, use_global)
    shapes = [(channels,), (channels,), (1,)]
    # Without given blobs: identity statistics. (Caffe's zero-filled blobs would make TEST-phase
    # BatchNorm scale by 1/sqrt(eps), which LSUV would then bake into the next layer.)
    values = ctx.initial_blobs(["mean", "variance", "moving-average factor"], shapes, [0.0, 1.0, 1.0])
    path = ctx.add_module(module)
    ctx.attach(module, path, ["mean", "variance", "factor"], values, shapes)
    return [Blob(ctx.call_module(path, x.node), x.shape)]


def _param_shape(ctx: LayerContext, shape: tuple, axis: int, num_axes: int) -> tuple:
    axis = _axis(ctx, axis, len(shape)) if shape else 0
    if num_axes < -1:
        raise ctx.error("num_axes must be -1 or more")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise ctx.error(f"axis {axis} + num_axes {num_axes} go past the input's {len(shape)} axes")
    _known(ctx, shape, range(axis, end), "the parameter shape")
    return axis, tuple(shape[axis:end])


def _broadcast_axis(ctx: LayerContext, x: Blob, other: Blob, axis: int) -> int:
    if not other.shape:
        return 0
    axis = _axis(ctx, axis, len(x.shape))
    span = x.shape[axis: axis + len(other.shape)]
    if len(span) != len(other.shape) or any(a is not None and b is not None and a != b for a, b in zip(span, other.shape)):
        raise ctx.error(f"second bottom of shape {_fmt(other.shape)} doesn't match {_fmt(x.shape)} from axis {axis}")
    return axis


@converter("Scale")
def scale(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.scale_param
    _bottoms(ctx, bottoms, at_least=1)
    if len(bottoms) > 2:
        raise ctx.error("Scale takes one or two bottoms")
    x = bottoms[0]
    if len(bottoms) == 1:
        axis, shape = _param_shape(ctx, x.shape, p.axis, p.num_axes)
        module = M.CaffeScale(shape, axis, p.bias_term)
        roles, shapes, fillers, attrs = _blob_and_bias(p, "scale", shape, _filler_or(p, "filler", 1.0), "weight", shape)
        values = ctx.initial_blobs(roles, shapes, fillers)
        path = ctx.add_module(module)
        ctx.attach(module, path, attrs, values, shapes)
        return [Blob(ctx.call_module(path, x.node), x.shape)]
    factor = bottoms[1]
    axis = _broadcast_axis(ctx, x, factor, p.axis)
    node = ctx.call(M.scale_by, x.node, factor.node, axis)
    if p.bias_term:  # Caffe's bias then covers the axes of bottom 0 that bottom 1 covers
        shape = tuple(x.shape[axis: axis + len(factor.shape)])
        _known(ctx, shape, range(len(shape)), "the bias shape")
        module = M.CaffeBias(shape, axis)
        values = ctx.initial_blobs(["bias"], [shape], [_filler_or(p, "bias_filler", 0.0)])
        path = ctx.add_module(module)
        ctx.attach(module, path, ["bias"], values, [shape])
        node = ctx.call_module(path, node)
    return [Blob(node, x.shape)]


@converter("Bias")
def bias(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.bias_param
    if len(bottoms) not in (1, 2):
        raise ctx.error("Bias takes one or two bottoms")
    x = bottoms[0]
    if len(bottoms) == 2:
        axis = _broadcast_axis(ctx, x, bottoms[1], p.axis)
        return [Blob(ctx.call(M.bias_by, x.node, bottoms[1].node, axis), x.shape)]
    axis, shape = _param_shape(ctx, x.shape, p.axis, p.num_axes)
    module = M.CaffeBias(shape, axis)
    values = ctx.initial_blobs(["bias"], [shape], [_filler_or(p, "filler", 0.0)])
    path = ctx.add_module(module)
    ctx.attach(module, path, ["bias"], values, [shape])
    return [Blob(ctx.call_module(path, x.node), x.shape)]


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------

def _unary(ctx: LayerContext, bottoms: list[Blob], fn, *args, **kwargs) -> list[Blob]:
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    return [Blob(ctx.call(fn, x.node, *args, **kwargs), x.shape)]


@converter("ReLU")
def relu(ctx, bottoms):
    slope = ctx.layer.relu_param.negative_slope
    if slope:
        return _unary(ctx, bottoms, F.leaky_relu, slope)
    return _unary(ctx, bottoms, F.relu)


@converter("PReLU")
def prelu(ctx, bottoms):
    p = ctx.layer.prelu_param
    return _channel_parameter(ctx, bottoms, "PReLU", p.channel_shared,
                              lambda channels, shape: M.CaffePReLU(channels, p.channel_shared),
                              "slope", "weight", _filler_or(p, "filler", 0.25))


def _blob_and_bias(p, role: str, shape: tuple, filler, attr: str, bias_shape: tuple):
    """(roles, shapes, fillers, module attributes) of a layer's first blob and, with ``p.bias_term``,
    of its bias blob (Caffe's ``bias_filler``, zero by default)."""
    roles, shapes, fillers, attrs = [role], [shape], [filler], [attr]
    if p.bias_term:
        roles.append("bias")
        shapes.append(bias_shape)
        fillers.append(_filler_or(p, "bias_filler", 0.0))
        attrs.append("bias")
    return roles, shapes, fillers, attrs


def _channel_parameter(ctx, bottoms, kind: str, shared: bool, build, role: str, attr: str, filler) -> list[Blob]:
    """A layer of one input with channels and one learned blob: a value per channel, or one
    ``shared`` by all (PReLU's slope, Normalize's scale). ``build(channels, blob shape)`` makes
    the module; the blob becomes its ``attr``."""
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) < 2:
        raise ctx.error(f"{kind} needs an input with channels, got {_fmt(x.shape)}")
    _known(ctx, x.shape, (1,), "the channel count")
    shape = () if shared else (x.shape[1],)
    module = build(x.shape[1], shape)
    values = ctx.initial_blobs([role], [shape], [filler])
    path = ctx.add_module(module)
    ctx.attach(module, path, [attr], values, [shape])
    return [Blob(ctx.call_module(path, x.node), x.shape)]


@converter("ELU")
def elu(ctx, bottoms):
    return _unary(ctx, bottoms, F.elu, ctx.layer.elu_param.alpha)


@converter("TanH")
def tanh(ctx, bottoms):
    return _unary(ctx, bottoms, torch.tanh)


@converter("Sigmoid")
def sigmoid(ctx, bottoms):
    return _unary(ctx, bottoms, torch.sigmoid)


@converter("AbsVal")
def absval(ctx, bottoms):
    return _unary(ctx, bottoms, torch.abs)


@converter("BNLL")
def bnll(ctx, bottoms):
    return _unary(ctx, bottoms, F.softplus)


@converter("Power")
def power(ctx, bottoms):
    p = ctx.layer.power_param
    return _unary(ctx, bottoms, M.power, p.power, p.scale, p.shift)


@converter("Dropout")
def dropout(ctx, bottoms):
    p = ctx.layer.dropout_param
    _bottoms(ctx, bottoms, 1)
    if not 0.0 <= p.dropout_ratio < 1.0:
        raise ctx.error(f"dropout_ratio must be in [0, 1), got {p.dropout_ratio}")
    if p.HasField("scale_train") and not p.scale_train:
        # Forks' scale_train: false leaves training outputs unscaled and scales at test time.
        return _unary(ctx, bottoms, M.scaled, 1.0 - p.dropout_ratio)
    return [bottoms[0]]  # identity in the TEST phase


@converter("Softmax")
def softmax(ctx, bottoms):
    _bottoms(ctx, bottoms, 1)
    axis = _axis(ctx, ctx.layer.softmax_param.axis, len(bottoms[0].shape))
    return _unary(ctx, bottoms, F.softmax, dim=axis)


# ---------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------

@converter("Split")
def split(ctx, bottoms):
    _bottoms(ctx, bottoms, 1)
    return [bottoms[0]] * len(ctx.layer.top)


@converter("Concat")
def concat(ctx, bottoms):
    p = ctx.layer.concat_param
    _bottoms(ctx, bottoms)
    first = bottoms[0].shape
    axis = int(p.concat_dim) if p.HasField("concat_dim") else p.axis
    axis = _axis(ctx, axis, len(first))
    for name, b in zip(ctx.layer.bottom[1:], bottoms[1:]):
        if len(b.shape) != len(first) or any(a != c for i, (a, c) in enumerate(zip(first, b.shape)) if i != axis):
            raise ctx.error(f"bottom {name!r} of shape {_fmt(b.shape)} can't be joined to {_fmt(first)} on axis {axis}")
    if len(bottoms) == 1:
        return [bottoms[0]]
    sizes = [b.shape[axis] for b in bottoms]
    total = None if any(s is None for s in sizes) else sum(sizes)
    shape = (*first[:axis], total, *first[axis + 1:])
    return [Blob(ctx.call(torch.cat, [b.node for b in bottoms], axis), shape)]


@converter("Slice")
def slice_(ctx, bottoms):
    p = ctx.layer.slice_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = int(p.slice_dim) if p.HasField("slice_dim") else p.axis
    axis = _axis(ctx, axis, len(x.shape))
    _known(ctx, x.shape, (axis,), "slicing")
    size, tops = x.shape[axis], len(ctx.layer.top)
    points = list(p.slice_point)
    if points:
        if len(points) != tops - 1 or points != sorted(points) or points[0] <= 0 or points[-1] >= size:
            raise ctx.error(f"slice_point {points} doesn't split axis {axis} of size {size} into {tops} parts")
        bounds = [0, *points, size]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        if size % tops:
            raise ctx.error(f"axis {axis} of size {size} doesn't split evenly into {tops} tops")
        sizes = [size // tops] * tops
    parts = ctx.call(torch.split, x.node, sizes, axis)
    return [Blob(ctx.call(operator.getitem, parts, i), (*x.shape[:axis], s, *x.shape[axis + 1:]))
            for i, s in enumerate(sizes)]


@converter("Flatten")
def flatten(ctx, bottoms):
    p = ctx.layer.flatten_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    n = len(x.shape)
    start = _axis(ctx, p.axis, n)
    end = _axis(ctx, p.end_axis, n, "end_axis")
    if end < start:
        raise ctx.error(f"end_axis {p.end_axis} comes before axis {p.axis}")
    span = x.shape[start:end + 1]
    size = None if any(d is None for d in span) else math.prod(span)
    shape = (*x.shape[:start], size, *x.shape[end + 1:])
    return [Blob(ctx.call(torch.flatten, x.node, start, end), shape)]


@converter("Reshape")
def reshape(ctx, bottoms):
    p = ctx.layer.reshape_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    dims = [int(d) for d in p.shape.dim]
    n = len(x.shape)
    axis = p.axis if p.axis >= 0 else n + p.axis + 1
    if not 0 <= axis <= n:
        raise ctx.error(f"axis {p.axis} is out of range for a {n}-D input")
    num_axes = p.num_axes
    if num_axes < -1 or (num_axes >= 0 and axis + num_axes > n):
        raise ctx.error(f"num_axes {num_axes} doesn't fit a {n}-D input from axis {axis}")
    end = n if num_axes == -1 else axis + num_axes
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise ctx.error(f"shape {dims}: at most one -1 and no other negative value")
    middle = []
    for i, d in enumerate(dims):
        if d == 0:
            if axis + i >= n:
                raise ctx.error(f"dim {i} is 0 (copy) but the input has no axis {axis + i}")
            middle.append(x.shape[axis + i])
        else:
            middle.append(d)
    replaced = x.shape[axis:end]
    # The batch size N is a symbol: it cancels when a 0 copies the batch axis into the result.
    known = [d for d in middle if d != -1]
    n_in, n_out = replaced.count(None), known.count(None)
    total = math.prod(d for d in replaced if d is not None)
    rest = math.prod(d for d in known if d is not None)
    if -1 in dims:
        if rest == 0 or total % rest or n_out > n_in:
            raise ctx.error(f"shape {dims} can't reshape {_fmt(x.shape)}")
        middle[dims.index(-1)] = total // rest if n_in == n_out else None
    elif n_in != n_out or total != rest:
        raise ctx.error(f"shape {dims} has a different size than {_fmt(x.shape)}")
    shape = (*x.shape[:axis], *middle, *x.shape[end:])
    return [Blob(ctx.call(M.caffe_reshape, x.node, tuple(dims), axis, num_axes), shape)]


@converter("Eltwise")
def eltwise(ctx, bottoms):
    p = ctx.layer.eltwise_param
    _bottoms(ctx, bottoms, at_least=2)
    _same_shapes(ctx, bottoms)
    nodes = [b.node for b in bottoms]
    op = {0: "PROD", 1: "SUM", 2: "MAX"}[p.operation]
    if op == "SUM":
        coeffs = tuple(float(c) for c in p.coeff)
        if coeffs and len(coeffs) != len(bottoms):
            raise ctx.error(f"{len(coeffs)} coeff values for {len(bottoms)} bottoms")
        node = ctx.call(M.eltwise_sum, *nodes, coeffs=coeffs)
    else:
        if len(p.coeff):
            raise ctx.error("coeff is only for the SUM operation")
        node = ctx.call(M.eltwise_prod if op == "PROD" else M.eltwise_max, *nodes)
    return [Blob(node, bottoms[0].shape)]


# ---------------------------------------------------------------------------------------------
# the rest of BVLC Caffe's computing layers
# ---------------------------------------------------------------------------------------------

@converter("Threshold")
def threshold(ctx, bottoms):
    return _unary(ctx, bottoms, M.threshold, float(ctx.layer.threshold_param.threshold))


@converter("Exp")
def exp(ctx, bottoms):
    p = ctx.layer.exp_param
    if p.base != -1 and p.base <= 0:
        raise ctx.error(f"base must be -1 (e) or positive, got {p.base}")
    log_base = 1.0 if p.base == -1 else math.log(p.base)
    return _unary(ctx, bottoms, M.exp_layer, log_base * p.scale, log_base * p.shift)


@converter("Log")
def log(ctx, bottoms):
    p = ctx.layer.log_param
    if p.base != -1 and (p.base <= 0 or p.base == 1):
        raise ctx.error(f"base must be -1 (e) or positive and not 1, got {p.base}")
    inv_log_base = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
    return _unary(ctx, bottoms, M.log_layer, p.scale, p.shift, inv_log_base)


@converter("Clip")
def clip(ctx, bottoms):
    p = ctx.layer.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise ctx.error("Clip needs both clip_param min and max")
    if p.min > p.max:
        raise ctx.error(f"min {p.min} is above max {p.max}")
    return _unary(ctx, bottoms, torch.clamp, float(p.min), float(p.max))


@converter("Swish")
def swish(ctx, bottoms):
    return _unary(ctx, bottoms, M.swish, float(ctx.layer.swish_param.beta))


@converter("ReLU6")
def relu6(ctx, bottoms):
    return _unary(ctx, bottoms, F.hardtanh, 0.0, 6.0)


@converter("Embed")
def embed(ctx, bottoms):
    """A lookup table (input_dim x num_output) indexed by the bottom's values; not an LSUV target
    (its output is rows of the table, not a sum LSUV could scale to unit variance)."""
    p = ctx.layer.embed_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    rows, outputs = int(p.input_dim), int(p.num_output)
    if rows <= 0 or outputs <= 0:
        raise ctx.error("Embed needs positive input_dim and num_output")
    module = M.CaffeEmbed(rows, outputs, p.bias_term)
    roles, shapes, fillers, attrs = _blob_and_bias(p, "weight", (rows, outputs), _filler_or(p, "weight_filler", 0.0),
                                                   "table", (outputs,))
    values = ctx.initial_blobs(roles, shapes, fillers)
    path = ctx.add_module(module)
    ctx.attach(module, path, attrs, values, shapes)
    return [Blob(ctx.call_module(path, x.node), (*x.shape, outputs))]


@converter("Tile")
def tile(ctx, bottoms):
    p = ctx.layer.tile_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = _axis(ctx, p.axis, len(x.shape))
    if p.tiles <= 0:
        raise ctx.error(f"tiles must be positive, got {p.tiles}")
    reps = [1] * len(x.shape)
    reps[axis] = int(p.tiles)
    size = x.shape[axis]
    shape = (*x.shape[:axis], None if size is None else size * p.tiles, *x.shape[axis + 1:])
    return [Blob(ctx.call(M.tile, x.node, tuple(reps)), shape)]


@converter("Reduction")
def reduction(ctx, bottoms):
    p = ctx.layer.reduction_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = _axis(ctx, p.axis, len(x.shape)) if x.shape else 0
    op = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}[p.operation]
    return [Blob(ctx.call(M.reduction, x.node, op, axis, float(p.coeff)), tuple(x.shape[:axis]))]


@converter("MVN")
def mvn(ctx, bottoms):
    p = ctx.layer.mvn_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) < 2:
        raise ctx.error(f"MVN needs an input with channels, got {_fmt(x.shape)}")
    start = 1 if p.across_channels else 2
    return [Blob(ctx.call(M.mvn, x.node, start, bool(p.normalize_variance), float(p.eps)), x.shape)]


@converter("Parameter")
def parameter(ctx, bottoms):
    """A learned blob as the layer's output (no bottoms); Caffe starts it at zero."""
    _bottoms(ctx, bottoms, 0, at_least=0)
    shape = tuple(int(d) for d in ctx.layer.parameter_param.shape.dim)
    if any(d <= 0 for d in shape):
        raise ctx.error(f"parameter_param shape {shape} must have positive dims")
    module = M.CaffeParameter(shape)
    values = ctx.initial_blobs(["value"], [shape], [0.0])
    path = ctx.add_module(module)
    ctx.attach(module, path, ["value"], values, [shape])
    return [Blob(ctx.call_module(path), shape)]


@converter("SPP")
def spp(ctx, bottoms):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins (Caffe's kernel, stride and pad
    per level), each flattened, then concatenated."""
    p = ctx.layer.spp_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"SPP needs a 4-D input, got {_fmt(x.shape)}")
    _known(ctx, x.shape, (1, 2, 3), "the pyramid geometry")
    method = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}[p.pool]
    if method == "STOCHASTIC":
        raise ctx.error("STOCHASTIC pooling is not supported")
    if p.pyramid_height <= 0:
        raise ctx.error("pyramid_height must be positive")
    parts, total = [], 0
    for level in range(int(p.pyramid_height)):
        bins = 2 ** level
        kernel = [-(-n // bins) for n in x.shape[2:]]
        pad = [(k * bins - n + 1) // 2 for k, n in zip(kernel, x.shape[2:])]
        pooled = _pool(ctx, x, method, kernel, kernel, pad, True)[0]
        size = math.prod(pooled.shape[1:])
        parts.append(ctx.call(torch.flatten, pooled.node, 1))
        total += size
    node = parts[0] if len(parts) == 1 else ctx.call(torch.cat, parts, 1)
    return [Blob(node, (x.shape[0], total))]


@converter("Im2col")
def im2col(ctx, bottoms):
    p = ctx.layer.convolution_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"Im2col is supported for 4-D inputs, got {_fmt(x.shape)}")
    _known(ctx, x.shape, (1, 2, 3), "the shape")
    kernel = _spatial(ctx, p, 2, "kernel", None)
    stride = _spatial(ctx, p, 2, "stride", 1)
    pad = _spatial(ctx, p, 2, "pad", 0)
    dilation = list(p.dilation) or [1]
    dilation = dilation * 2 if len(dilation) == 1 else dilation
    sizes = [(n + 2 * pd - (d * (k - 1) + 1)) // s + 1 for n, k, s, pd, d in zip(x.shape[2:], kernel, stride, pad, dilation)]
    if any(o <= 0 for o in sizes):
        raise ctx.error(f"kernel {kernel} does not fit the input {_fmt(x.shape)}")
    node = ctx.call(M.im2col, x.node, tuple(kernel), tuple(dilation), tuple(pad), tuple(stride), tuple(sizes))
    return [Blob(node, (x.shape[0], x.shape[1] * kernel[0] * kernel[1], *sizes))]


@converter("BatchReindex")
def batch_reindex(ctx, bottoms):
    _bottoms(ctx, bottoms, 2)
    x, index = bottoms
    if len(index.shape) != 1:
        raise ctx.error(f"the index bottom must be 1-D, got {_fmt(index.shape)}")
    return [Blob(ctx.call(M.batch_reindex, x.node, index.node), (index.shape[0], *x.shape[1:]))]


@converter("Filter")
def filter_(ctx, bottoms):
    """Keeps the items (axis 0) whose selector (the last bottom) is non-zero: the batch size of
    the tops depends on the data."""
    _bottoms(ctx, bottoms, at_least=2)
    if len(ctx.layer.top) != len(bottoms) - 1:
        raise ctx.error("Filter needs one top per bottom but the last (the selector)")
    selector = bottoms[-1]
    if len(selector.shape) > 1 and any(d != 1 for d in selector.shape[1:]):
        raise ctx.error(f"the selector must be (N) or (N, 1, ...), got {_fmt(selector.shape)}")
    picked = ctx.call(M.filter_items, selector.node, *[b.node for b in bottoms[:-1]])
    return [Blob(ctx.call(operator.getitem, picked, i), (None, *b.shape[1:])) for i, b in enumerate(bottoms[:-1])]


@converter("Crop")
def crop(ctx, bottoms):
    p = ctx.layer.crop_param
    _bottoms(ctx, bottoms, 2)
    x, ref = bottoms
    if len(x.shape) != len(ref.shape):
        raise ctx.error(f"bottoms of {len(x.shape)} and {len(ref.shape)} axes")
    axis = _axis(ctx, p.axis, len(x.shape))
    if axis == 0:
        raise ctx.error("cropping the batch axis is not supported")
    count = len(x.shape) - axis
    offsets = [int(o) for o in p.offset]
    if len(offsets) == 1:
        offsets *= count
    elif not offsets:
        offsets = [0] * count
    elif len(offsets) != count:
        raise ctx.error(f"{len(offsets)} offsets for the {count} axes from axis {axis}")
    _known(ctx, x.shape, range(axis, len(x.shape)), "cropping")
    _known(ctx, ref.shape, range(axis, len(ref.shape)), "cropping")
    for i, (o, n, m) in enumerate(zip(offsets, x.shape[axis:], ref.shape[axis:])):
        if o + m > n:
            raise ctx.error(f"axis {axis + i}: offset {o} + size {m} exceed the input's {n}")
    sizes = tuple(ref.shape[axis:])
    shape = (*x.shape[:axis], *sizes)
    return [Blob(ctx.call(M.crop, x.node, axis, tuple(offsets), sizes), shape)]


@converter("ArgMax")
def argmax(ctx, bottoms):
    p = ctx.layer.argmax_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    k = int(p.top_k)
    if p.HasField("axis"):
        axis = _axis(ctx, p.axis, len(x.shape))
        if axis == 0:
            raise ctx.error("ArgMax over the batch axis is not supported")
        _known(ctx, x.shape, (axis,), "top_k")
        if not 1 <= k <= x.shape[axis]:
            raise ctx.error(f"top_k {k} must be in 1..{x.shape[axis]}")
        shape = (*x.shape[:axis], k, *x.shape[axis + 1:])
        return [Blob(ctx.call(M.argmax_axis, x.node, k, axis, bool(p.out_max_val)), shape)]
    _known(ctx, x.shape, range(1, len(x.shape)), "top_k")
    size = math.prod(x.shape[1:])
    if not 1 <= k <= size:
        raise ctx.error(f"top_k {k} must be in 1..{size}")
    shape = (x.shape[0], 2 if p.out_max_val else 1, k, *([1] * (len(x.shape) - 3)))
    return [Blob(ctx.call(M.argmax_flat, x.node, k, bool(p.out_max_val), len(shape)), shape)]


# ---------------------------------------------------------------------------------------------
# layers of Caffe forks (SSD, ShuffleNet, SegNet / ENet, DeepLab / PSPNet, SE-Net)
# ---------------------------------------------------------------------------------------------

@converter("Permute")
def permute(ctx, bottoms):
    """SSD's Permute: ``order`` names the new axis order; axes it leaves out follow in order."""
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    n = len(x.shape)
    order = [int(o) for o in ctx.layer.permute_param.order]
    if len(set(order)) != len(order) or any(o >= n for o in order):
        raise ctx.error(f"order {order} is not a permutation of the {n} axes")
    order += [a for a in range(n) if a not in order]
    if order[0] != 0:
        raise ctx.error("moving the batch axis is not supported")
    return [Blob(ctx.call(torch.permute, x.node, tuple(order)), tuple(x.shape[a] for a in order))]


@converter("Normalize")
def normalize(ctx, bottoms):
    """SSD's Normalize: x / sqrt(sum of squares + eps), over C*H*W (across_spatial) or over C
    at each position, times a learned scale (one, or one per channel)."""
    p = ctx.layer.norm_param
    return _channel_parameter(ctx, bottoms, "Normalize", p.channel_shared,
                              lambda channels, shape: M.CaffeNormalize(shape, bool(p.across_spatial), float(p.eps)),
                              "scale", "scale", _filler_or(p, "scale_filler", 1.0))


@converter("ShuffleChannel")
def shuffle_channel(ctx, bottoms):
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    group = int(ctx.layer.shuffle_channel_param.group)
    _known(ctx, x.shape, (1,), "the channel count")
    if len(x.shape) < 2 or group <= 0 or x.shape[1] % group:
        raise ctx.error(f"group {group} must divide the channels of {_fmt(x.shape)}")
    return [Blob(ctx.call(M.shuffle_channel, x.node, group), x.shape)]


@converter("Upsample")
def upsample(ctx, bottoms):
    """SegNet's Upsample (two bottoms: values and the pooling mask; each value goes to the
    position its mask names, zeros elsewhere), or with one bottom nearest-neighbour by ``scale``."""
    p = ctx.layer.upsample_param
    if len(bottoms) not in (1, 2):
        raise ctx.error("Upsample takes one bottom, or two (values and a pooling mask)")
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"Upsample needs a 4-D input, got {_fmt(x.shape)}")
    _known(ctx, x.shape, (1, 2, 3), "the output size")
    scale_h = int(p.scale_h) if p.HasField("scale_h") else int(p.scale)
    scale_w = int(p.scale_w) if p.HasField("scale_w") else int(p.scale)
    if scale_h <= 0 or scale_w <= 0:
        raise ctx.error("scale must be positive")
    if len(bottoms) == 1:
        shape = (*x.shape[:2], x.shape[2] * scale_h, x.shape[3] * scale_w)
        return [Blob(ctx.call(M.upsample_nearest, x.node, scale_h, scale_w), shape)]
    mask = bottoms[1]
    if mask.shape != x.shape:
        raise ctx.error(f"the mask's shape {_fmt(mask.shape)} differs from the input's {_fmt(x.shape)}")
    height = int(p.upsample_h) if p.HasField("upsample_h") else x.shape[2] * scale_h - int(p.pad_out_h)
    width = int(p.upsample_w) if p.HasField("upsample_w") else x.shape[3] * scale_w - int(p.pad_out_w)
    if height <= 0 or width <= 0:
        raise ctx.error(f"output size {height}x{width} must be positive")
    shape = (*x.shape[:2], height, width)
    return [Blob(ctx.call(M.unpool, x.node, mask.node, height, width), shape)]


@converter("Interp")
def interp(ctx, bottoms):
    """DeepLab's Interp: bilinear resize with corners aligned, to height/width, by shrink and/or
    zoom factors, or to the second bottom's size; negative pad_beg/pad_end crop first."""
    p = ctx.layer.interp_param
    if len(bottoms) not in (1, 2):
        raise ctx.error("Interp takes one or two bottoms")
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"Interp needs a 4-D input, got {_fmt(x.shape)}")
    _known(ctx, x.shape, (2, 3), "the output size")
    if p.pad_beg > 0 or p.pad_end > 0:
        raise ctx.error("only pad_beg, pad_end <= 0 (cropping) are supported, as in DeepLab")
    h_in, w_in = (n + p.pad_beg + p.pad_end for n in x.shape[2:])
    if h_in <= 0 or w_in <= 0:
        raise ctx.error("pad_beg / pad_end crop the whole input")
    zoom, shrink, size = p.HasField("zoom_factor"), p.HasField("shrink_factor"), p.HasField("height") and p.HasField("width")
    if len(bottoms) == 2:
        if zoom or shrink or size:
            raise ctx.error("with a second bottom the size comes from it: no factor, height or width")
        _known(ctx, bottoms[1].shape, (2, 3), "the output size")
        h_out, w_out = bottoms[1].shape[2:4]
    elif size:
        if zoom or shrink:
            raise ctx.error("give height/width or factors, not both")
        h_out, w_out = int(p.height), int(p.width)
    elif zoom or shrink:
        if p.shrink_factor < 1 or p.zoom_factor < 1:
            raise ctx.error("shrink_factor and zoom_factor must be at least 1")
        h_out, w_out = h_in, w_in
        if shrink:
            h_out, w_out = (h_out - 1) // p.shrink_factor + 1, (w_out - 1) // p.shrink_factor + 1
        if zoom:
            h_out, w_out = h_out + (h_out - 1) * (p.zoom_factor - 1), w_out + (w_out - 1) * (p.zoom_factor - 1)
    else:
        raise ctx.error("Interp needs height and width, zoom_factor / shrink_factor, or a second bottom")
    if h_out <= 0 or w_out <= 0:
        raise ctx.error(f"output size {h_out}x{w_out} must be positive")
    node = ctx.call(M.interp, x.node, int(-p.pad_beg), int(h_in), int(w_in), int(h_out), int(w_out))
    return [Blob(node, (*x.shape[:2], h_out, w_out))]


@converter("BN")
def bn(ctx, bottoms):
    """SegNet / ENet BN: blobs scale and shift (1, C, 1, 1). bn_mode INFERENCE is
    scale * x + shift (statistics folded in); LEARN normalises with the batch's statistics first."""
    p = ctx.layer.bn_param
    _bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"BN needs a 4-D input, got {_fmt(x.shape)}")
    _known(ctx, x.shape, (1,), "the channel count")
    shape = (1, x.shape[1], 1, 1)
    # Without a filler the scale starts at 1, not at the zero of Caffe's default constant filler
    # (which would zero the layer's output: SegNet / ENet prototxts always give one).
    scale_filler = p.scale_filler if p.HasField("scale_filler") else _filler_or(p, "slope_filler", 1.0)
    shift_filler = p.shift_filler if p.HasField("shift_filler") else _filler_or(p, "bias_filler", 0.0)
    eps = float(p.eps) if p.HasField("eps") else 1e-9  # SegNet's and ENet's BN fix it at 1e-9
    module = M.CaffeBN(x.shape[1], inference=p.bn_mode == 1, eps=eps)
    values = ctx.initial_blobs(["scale", "shift"], [shape, shape], [scale_filler, shift_filler])
    path = ctx.add_module(module)
    ctx.attach(module, path, ["weight", "bias"], values, [shape, shape])
    return [Blob(ctx.call_module(path, x.node), x.shape)]


@converter("Axpy")
def axpy(ctx, bottoms):
    """SE-Net's Axpy: a * x + y, a of shape (N, C) or (N, C, 1, 1) scaling each channel of x."""
    _bottoms(ctx, bottoms, 3)
    a, x, y = bottoms
    if x.shape != y.shape:
        raise ctx.error(f"x {_fmt(x.shape)} and y {_fmt(y.shape)} differ in shape")
    if len(x.shape) < 2 or tuple(a.shape[1:2]) != tuple(x.shape[1:2]) or any(d != 1 for d in a.shape[2:]):
        raise ctx.error(f"the scale's shape {_fmt(a.shape)} must be (N, C) or (N, C, 1, 1) for {_fmt(x.shape)}")
    return [Blob(ctx.call(M.axpy, a.node, x.node, y.node), x.shape)]


@converter("LSTM", "RNN")
def recurrent(ctx, bottoms):
    """BVLC's LSTM / RNN, unrolled over axis 0 (time; axis 1 holds the independent streams):
    bottoms x, cont, [x_static], [h_0 (and c_0 for LSTM) with expose_hidden]. Their blobs are kept
    as given or filled; they are not LSUV targets (a recurrent weight scaled for unit variance of
    one step changes every later step: the log says so)."""
    p = ctx.layer.recurrent_param
    lstm = ctx.layer.type == "LSTM"
    hidden_count = (2 if lstm else 1) if p.expose_hidden else 0
    if len(bottoms) not in (2 + hidden_count, 3 + hidden_count):
        raise ctx.error(f"{ctx.layer.type} takes x, cont, optionally x_static"
                        + (f", then {hidden_count} initial state(s) (expose_hidden)" if hidden_count else ""))
    if len(ctx.layer.top) != 1 + hidden_count:
        raise ctx.error(f"{ctx.layer.type} has {1 + hidden_count} top(s) here")
    x, cont = bottoms[0], bottoms[1]
    static = bottoms[2] if len(bottoms) == 3 + hidden_count else None
    states = bottoms[len(bottoms) - hidden_count:] if hidden_count else []
    if len(x.shape) < 3:
        raise ctx.error(f"x must be (T, N, ...), got {_fmt(x.shape)}")
    _known(ctx, x.shape, range(1, len(x.shape)), "the input size")
    streams, size, hidden = x.shape[1], math.prod(x.shape[2:]), int(p.num_output)
    if hidden <= 0:
        raise ctx.error("num_output must be positive")
    if len(cont.shape) != 2 or cont.shape[1] != streams:
        raise ctx.error(f"cont must be (T, {streams}), got {_fmt(cont.shape)}")
    for state in states:
        if tuple(state.shape[1:]) != (streams, hidden):
            raise ctx.error(f"an initial state must be (1, {streams}, {hidden}), got {_fmt(state.shape)}")
    gates = 4 * hidden if lstm else hidden
    names = ["W_xc", "b_c"] if lstm else ["W_xh", "b_h"]
    shapes = [(gates, size), (gates,)]
    static_size = None
    if static is not None:
        if len(static.shape) < 2 or static.shape[0] != streams and static.shape[0] is not None:
            raise ctx.error(f"x_static must be (N, ...) with N = {streams}, got {_fmt(static.shape)}")
        _known(ctx, static.shape, range(1, len(static.shape)), "the static input size")
        static_size = math.prod(static.shape[1:])
        names.append("W_xc_static" if lstm else "W_xh_static")
        shapes.append((gates, static_size))
    names += ["W_hc"] if lstm else ["W_hh", "W_ho", "b_o"]
    shapes += [(gates, hidden)] if lstm else [(hidden, hidden), (hidden, hidden), (hidden,)]
    fillers = [_filler_or(p, "bias_filler", 0.0) if n.startswith("b_") else _filler_or(p, "weight_filler", 0.0)
               for n in names]
    module = M.CaffeRecurrent(lstm, names, shapes)
    values = ctx.initial_blobs(names, shapes, fillers)
    path = ctx.add_module(module)
    ctx.attach(module, path, names, values, shapes)
    ctx.builder.notes.append(f"{ctx.layer.type} layer {ctx.layer.name!r} runs with its blobs as given (or filled); "
                             "recurrent weights are not LSUV targets")
    args = [x.node, cont.node, static.node if static is not None else None, *[s.node for s in states]]
    out = ctx.call_module(path, *args)
    shapes_out = [(x.shape[0], streams, hidden)] + [(1, streams, hidden)] * hidden_count
    if not hidden_count:
        return [Blob(out, shapes_out[0])]
    return [Blob(ctx.call(operator.getitem, out, i), s) for i, s in enumerate(shapes_out)]
