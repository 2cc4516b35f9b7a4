"""Layers that combine or reduce blobs: Eltwise, Reduction, ArgMax and the fork layer Axpy (SE-Net).
"""

from __future__ import annotations

import math


from .. import modules as M
from ..context import Blob
from .common import axis_index, check_bottoms, check_same_shapes, require_known, shape_text
from .registry import converter


@converter("Eltwise")
def eltwise(ctx, bottoms):
    p = ctx.layer.eltwise_param
    check_bottoms(ctx, bottoms, at_least=2)
    check_same_shapes(ctx, bottoms)
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


@converter("Axpy")
def axpy(ctx, bottoms):
    """SE-Net's Axpy: a * x + y, a of shape (N, C) or (N, C, 1, 1) scaling each channel of x."""
    check_bottoms(ctx, bottoms, 3)
    a, x, y = bottoms
    if x.shape != y.shape:
        raise ctx.error(f"x {shape_text(x.shape)} and y {shape_text(y.shape)} differ in shape")
    if len(x.shape) < 2 or tuple(a.shape[1:2]) != tuple(x.shape[1:2]) or any(d != 1 for d in a.shape[2:]):
        raise ctx.error(f"the scale's shape {shape_text(a.shape)} must be (N, C) or (N, C, 1, 1) for {shape_text(x.shape)}")
    return [Blob(ctx.call(M.axpy, a.node, x.node, y.node), x.shape)]


@converter("Reduction")
def reduction(ctx, bottoms):
    p = ctx.layer.reduction_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = axis_index(ctx, p.axis, len(x.shape)) if x.shape else 0
    op = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}[p.operation]
    return [Blob(ctx.call(M.reduction, x.node, op, axis, float(p.coeff)), tuple(x.shape[:axis]))]


@converter("ArgMax")
def argmax(ctx, bottoms):
    p = ctx.layer.argmax_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    k = int(p.top_k)
    if p.HasField("axis"):
        axis = axis_index(ctx, p.axis, len(x.shape))
        if axis == 0:
            raise ctx.error("ArgMax over the batch axis is not supported")
        require_known(ctx, x.shape, (axis,), "top_k")
        if not 1 <= k <= x.shape[axis]:
            raise ctx.error(f"top_k {k} must be in 1..{x.shape[axis]}")
        shape = (*x.shape[:axis], k, *x.shape[axis + 1:])
        return [Blob(ctx.call(M.argmax_axis, x.node, k, axis, bool(p.out_max_val)), shape)]
    require_known(ctx, x.shape, range(1, len(x.shape)), "top_k")
    size = math.prod(x.shape[1:])
    if not 1 <= k <= size:
        raise ctx.error(f"top_k {k} must be in 1..{size}")
    shape = (x.shape[0], 2 if p.out_max_val else 1, k, *([1] * (len(x.shape) - 3)))
    return [Blob(ctx.call(M.argmax_flat, x.node, k, bool(p.out_max_val), len(shape)), shape)]
