"""Pooling (MAX / AVE, Caffe's ceil rounding, global pooling) and spatial pyramid pooling (SPP)."""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F

from .. import modules as M
from ..context import Blob, LayerContext
from .common import check_bottoms, require_known, shape_text, spatial_values
from .registry import converter


@converter("Pooling")
def pooling(ctx: LayerContext, bottoms: list[Blob]) -> list[Blob]:
    p = ctx.layer.pooling_param
    check_bottoms(ctx, bottoms, 1)
    with_mask = len(ctx.layer.top) == 2
    if len(ctx.layer.top) > 2 or (with_mask and p.pool != 0):
        raise ctx.error("Pooling has one top, or two for MAX pooling (output and mask)")
    if with_mask and p.global_pooling:
        raise ctx.error("global MAX pooling with a mask top is not supported")
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"Caffe pools 4-D blobs, got shape {shape_text(x.shape)}")
    method = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}[p.pool]
    if method == "STOCHASTIC":
        raise ctx.error("STOCHASTIC pooling is not supported")
    require_known(ctx, x.shape, (1, 2, 3), "the pooling geometry")
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise ctx.error("with global_pooling the kernel size can't be given")
        if spatial_values(ctx, p, 2, "pad", 0, repeated=False) != [0, 0] or \
                spatial_values(ctx, p, 2, "stride", 1, repeated=False) != [1, 1]:
            raise ctx.error("with global_pooling only pad = 0 and stride = 1 are allowed")
        fn = M.global_max_pool if method == "MAX" else M.global_ave_pool
        return [Blob(ctx.call(fn, x.node), (*x.shape[:2], 1, 1))]
    kernel = spatial_values(ctx, p, 2, "kernel", None, repeated=False)
    stride = spatial_values(ctx, p, 2, "stride", 1, repeated=False)
    pad = spatial_values(ctx, p, 2, "pad", 0, repeated=False)
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
            raise ctx.error(f"kernel {kernel} does not fit the input {shape_text(x.shape)}")
        if (o - 1) * s - pd >= n:
            raise ctx.error(f"the last pooling window starts outside the input {shape_text(x.shape)} "
                            "(Caffe would output -FLT_MAX there); not supported")
    torch_size = [torch_pooled_size(n, k, s, pd, ceil) for n, k, s, pd in zip(in_size, kernel, stride, pad)]
    out_shape = (*x.shape[:2], *out_size)
    if all(2 * pd <= k for pd, k in zip(pad, kernel)) and torch_size == out_size:
        if with_mask:  # SegNet's mask: the argmax's flat index h * W + w in its input plane, as Caffe writes it
            pair = ctx.call(M.max_pool_with_mask, x.node, tuple(kernel), tuple(stride), tuple(pad), ceil)
            return [Blob(ctx.call(operator.getitem, pair, 0), out_shape),
                    Blob(ctx.call(operator.getitem, pair, 1), out_shape, indexes=tuple(in_size))]
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


@converter("SPP")
def spp(ctx, bottoms):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins (Caffe's kernel, stride and pad
    per level), each flattened, then concatenated."""
    p = ctx.layer.spp_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"SPP needs a 4-D input, got {shape_text(x.shape)}")
    require_known(ctx, x.shape, (1, 2, 3), "the pyramid geometry")
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
