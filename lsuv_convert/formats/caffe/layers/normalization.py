"""Normalization and affine layers: LRN, BatchNorm, Scale, Bias, MVN, and the forks' Normalize (SSD)
and BN (SegNet).
"""

from __future__ import annotations

import torch.nn.functional as F

from .. import modules as M
from ..context import Blob, LayerContext
from .common import axis_index, blob_and_bias, channel_parameter, check_bottoms, filler_or, require_known, shape_text
from .registry import converter


@converter("LRN")
def lrn(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.lrn_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    size = int(p.local_size)
    if size % 2 == 0 or size <= 0:
        raise ctx.error(f"local_size must be odd and positive, got {size}")
    if len(x.shape) != 4:
        raise ctx.error(f"LRN needs a 4-D input, got {shape_text(x.shape)}")
    if p.norm_region == 0:  # ACROSS_CHANNELS: alpha / size * sum of squares, plus k
        node = ctx.call(F.local_response_norm, x.node, size, alpha=p.alpha, beta=p.beta, k=p.k)
    else:
        node = ctx.call(M.lrn_within_channel, x.node, size, p.alpha, p.beta)
    return [Blob(node, x.shape)]


@converter("BatchNorm")
def batch_norm(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.batch_norm_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) < 2:
        raise ctx.error(f"BatchNorm needs an input with channels, got {shape_text(x.shape)}")
    require_known(ctx, x.shape, (1,), "the channel count")
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
    axis = axis_index(ctx, axis, len(shape)) if shape else 0
    if num_axes < -1:
        raise ctx.error("num_axes must be -1 or more")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise ctx.error(f"axis {axis} + num_axes {num_axes} go past the input's {len(shape)} axes")
    require_known(ctx, shape, range(axis, end), "the parameter shape")
    return axis, tuple(shape[axis:end])


def _broadcast_axis(ctx: LayerContext, x: Blob, other: Blob, axis: int) -> int:
    if not other.shape:
        return 0
    axis = axis_index(ctx, axis, len(x.shape))
    span = x.shape[axis: axis + len(other.shape)]
    if len(span) != len(other.shape) or any(a is not None and b is not None and a != b for a, b in zip(span, other.shape)):
        raise ctx.error(f"second bottom of shape {shape_text(other.shape)} doesn't match {shape_text(x.shape)} from axis {axis}")
    return axis


@converter("Scale")
def scale(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.scale_param
    check_bottoms(ctx, bottoms, at_least=1)
    if len(bottoms) > 2:
        raise ctx.error("Scale takes one or two bottoms")
    x = bottoms[0]
    if len(bottoms) == 1:
        axis, shape = _param_shape(ctx, x.shape, p.axis, p.num_axes)
        module = M.CaffeScale(shape, axis, p.bias_term)
        roles, shapes, fillers, attrs = blob_and_bias(p, "scale", shape, filler_or(p, "filler", 1.0), "weight", shape)
        values = ctx.initial_blobs(roles, shapes, fillers)
        path = ctx.add_module(module)
        ctx.attach(module, path, attrs, values, shapes)
        return [Blob(ctx.call_module(path, x.node), x.shape)]
    factor = bottoms[1]
    axis = _broadcast_axis(ctx, x, factor, p.axis)
    node = ctx.call(M.scale_by, x.node, factor.node, axis)
    if p.bias_term:  # Caffe's bias then covers the axes of bottom 0 that bottom 1 covers
        shape = tuple(x.shape[axis: axis + len(factor.shape)])
        require_known(ctx, shape, range(len(shape)), "the bias shape")
        module = M.CaffeBias(shape, axis)
        values = ctx.initial_blobs(["bias"], [shape], [filler_or(p, "bias_filler", 0.0)])
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
    values = ctx.initial_blobs(["bias"], [shape], [filler_or(p, "filler", 0.0)])
    path = ctx.add_module(module)
    ctx.attach(module, path, ["bias"], values, [shape])
    return [Blob(ctx.call_module(path, x.node), x.shape)]


@converter("MVN")
def mvn(ctx, bottoms):
    p = ctx.layer.mvn_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) < 2:
        raise ctx.error(f"MVN needs an input with channels, got {shape_text(x.shape)}")
    start = 1 if p.across_channels else 2
    return [Blob(ctx.call(M.mvn, x.node, start, bool(p.normalize_variance), float(p.eps)), x.shape)]


@converter("Normalize")
def normalize(ctx, bottoms):
    """SSD's Normalize: x / sqrt(sum of squares + eps), over C*H*W (across_spatial) or over C
    at each position, times a learned scale (one, or one per channel)."""
    p = ctx.layer.norm_param
    return channel_parameter(ctx, bottoms, "Normalize", p.channel_shared,
                              lambda channels, shape: M.CaffeNormalize(shape, bool(p.across_spatial), float(p.eps)),
                              "scale", "scale", filler_or(p, "scale_filler", 1.0))


@converter("BN")
def bn(ctx, bottoms):
    """SegNet / ENet BN: blobs scale and shift (1, C, 1, 1). bn_mode INFERENCE is
    scale * x + shift (statistics folded in); LEARN normalises with the batch's statistics first."""
    p = ctx.layer.bn_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"BN needs a 4-D input, got {shape_text(x.shape)}")
    require_known(ctx, x.shape, (1,), "the channel count")
    shape = (1, x.shape[1], 1, 1)
    # Without a filler the scale starts at 1, not at the zero of Caffe's default constant filler
    # (which would zero the layer's output: SegNet / ENet prototxts always give one).
    scale_filler = p.scale_filler if p.HasField("scale_filler") else filler_or(p, "slope_filler", 1.0)
    shift_filler = p.shift_filler if p.HasField("shift_filler") else filler_or(p, "bias_filler", 0.0)
    eps = float(p.eps) if p.HasField("eps") else 1e-9  # SegNet's and ENet's BN fix it at 1e-9
    module = M.CaffeBN(x.shape[1], inference=p.bn_mode == 1, eps=eps)
    values = ctx.initial_blobs(["scale", "shift"], [shape, shape], [scale_filler, shift_filler])
    path = ctx.add_module(module)
    ctx.attach(module, path, ["weight", "bias"], values, [shape, shape])
    return [Blob(ctx.call_module(path, x.node), x.shape)]
