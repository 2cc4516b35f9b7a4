"""The layers LSUV initializes: Convolution, Deconvolution (and the forks' depthwise convolution types)
and InnerProduct.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..context import Blob, LayerContext
from .common import axis_index, blob_and_bias, check_bottoms, check_same_shapes, filler_or, require_known, shape_text, spatial_values
from .registry import converter


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_DECONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
DEPTHWISE_TYPES = ("ConvolutionDepthwise", "DepthwiseConvolution")


@converter("Convolution", "Deconvolution", *DEPTHWISE_TYPES)
def convolution(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    """Convolution and Deconvolution; the depthwise forks' types are Convolution with group =
    channels (their weight blob is Convolution's, (num_output, 1, kh, kw))."""
    p = ctx.layer.convolution_param
    deconv = ctx.layer.type == "Deconvolution"
    check_bottoms(ctx, bottoms)
    if len(ctx.layer.top) != len(bottoms):
        raise ctx.error(f"{ctx.layer.type} needs one top per bottom")
    check_same_shapes(ctx, bottoms)
    shape = bottoms[0].shape
    if len(shape) < 3:
        raise ctx.error(f"needs an input with spatial axes, got shape {shape_text(shape)}")
    if axis_index(ctx, p.axis, len(shape)) != 1:
        raise ctx.error("only axis 1 (channels) is supported")
    n = len(shape) - 2
    if n not in _CONV:
        raise ctx.error(f"{n}-D convolution is not supported")
    require_known(ctx, shape, range(1, len(shape)), "the shape")
    channels = shape[1]
    kernel = spatial_values(ctx, p, n, "kernel", None)
    stride = spatial_values(ctx, p, n, "stride", 1)
    pad = spatial_values(ctx, p, n, "pad", 0)
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
                            f"the input {shape_text(shape)}")
        sizes.append(out)
    cls = (_DECONV if deconv else _CONV)[n]
    in_ch, out_ch = channels, outputs
    # Built on the meta device (no memory, no init): ctx.attach puts the real blobs in.
    module = cls(in_ch, out_ch, tuple(kernel), stride=tuple(stride), padding=tuple(pad), dilation=tuple(dilation),
                 groups=group, bias=p.bias_term, device="meta")
    w_shape = tuple(module.weight.shape)  # conv (out, in/g, k...), deconv (in, out/g, k...): Caffe's layouts
    roles, shapes, fillers, attrs = blob_and_bias(p, "weight", w_shape, filler_or(p, "weight_filler", 0.0), "weight",
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
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = axis_index(ctx, p.axis, len(x.shape))
    require_known(ctx, x.shape, range(axis, len(x.shape)), "the inner product size")
    k = math.prod(x.shape[axis:])
    outputs = int(p.num_output)
    if outputs <= 0:
        raise ctx.error("num_output must be positive")
    module = nn.Linear(k, outputs, bias=p.bias_term, device="meta")
    w_shape = (k, outputs) if p.transpose else (outputs, k)
    roles, shapes, fillers, attrs = blob_and_bias(p, "weight", w_shape, filler_or(p, "weight_filler", 0.0), "weight",
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
