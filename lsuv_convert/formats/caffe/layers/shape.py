"""Layers that move values without computing new ones: Split, Concat, Slice, Flatten, Reshape, Tile,
Im2col, BatchReindex, Filter, Crop, and the forks' Permute (SSD) and ShuffleChannel.
"""

from __future__ import annotations

import math
import operator

import torch

from .. import modules as M
from ..context import Blob
from .common import axis_index, check_bottoms, require_known, shape_text, spatial_values
from .registry import converter


@converter("Split")
def split(ctx, bottoms):
    check_bottoms(ctx, bottoms, 1)
    return [bottoms[0]] * len(ctx.layer.top)


@converter("Concat")
def concat(ctx, bottoms):
    p = ctx.layer.concat_param
    check_bottoms(ctx, bottoms)
    first = bottoms[0].shape
    axis = int(p.concat_dim) if p.HasField("concat_dim") else p.axis
    axis = axis_index(ctx, axis, len(first))
    for name, b in zip(ctx.layer.bottom[1:], bottoms[1:]):
        if len(b.shape) != len(first) or any(a != c for i, (a, c) in enumerate(zip(first, b.shape)) if i != axis):
            raise ctx.error(f"bottom {name!r} of shape {shape_text(b.shape)} can't be joined to {shape_text(first)} on axis {axis}")
    if len(bottoms) == 1:
        return [bottoms[0]]
    sizes = [b.shape[axis] for b in bottoms]
    total = None if any(s is None for s in sizes) else sum(sizes)
    shape = (*first[:axis], total, *first[axis + 1:])
    return [Blob(ctx.call(torch.cat, [b.node for b in bottoms], axis), shape)]


@converter("Slice")
def slice_(ctx, bottoms):
    p = ctx.layer.slice_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = int(p.slice_dim) if p.HasField("slice_dim") else p.axis
    axis = axis_index(ctx, axis, len(x.shape))
    require_known(ctx, x.shape, (axis,), "slicing")
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
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    n = len(x.shape)
    start = axis_index(ctx, p.axis, n)
    end = axis_index(ctx, p.end_axis, n, "end_axis")
    if end < start:
        raise ctx.error(f"end_axis {p.end_axis} comes before axis {p.axis}")
    span = x.shape[start:end + 1]
    size = None if any(d is None for d in span) else math.prod(span)
    shape = (*x.shape[:start], size, *x.shape[end + 1:])
    return [Blob(ctx.call(torch.flatten, x.node, start, end), shape)]


@converter("Reshape")
def reshape(ctx, bottoms):
    p = ctx.layer.reshape_param
    check_bottoms(ctx, bottoms, 1)
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
            raise ctx.error(f"shape {dims} can't reshape {shape_text(x.shape)}")
        middle[dims.index(-1)] = total // rest if n_in == n_out else None
    elif n_in != n_out or total != rest:
        raise ctx.error(f"shape {dims} has a different size than {shape_text(x.shape)}")
    shape = (*x.shape[:axis], *middle, *x.shape[end:])
    return [Blob(ctx.call(M.caffe_reshape, x.node, tuple(dims), axis, num_axes), shape)]


@converter("Tile")
def tile(ctx, bottoms):
    p = ctx.layer.tile_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    axis = axis_index(ctx, p.axis, len(x.shape))
    if p.tiles <= 0:
        raise ctx.error(f"tiles must be positive, got {p.tiles}")
    reps = [1] * len(x.shape)
    reps[axis] = int(p.tiles)
    size = x.shape[axis]
    shape = (*x.shape[:axis], None if size is None else size * p.tiles, *x.shape[axis + 1:])
    return [Blob(ctx.call(M.tile, x.node, tuple(reps)), shape)]


@converter("Im2col")
def im2col(ctx, bottoms):
    p = ctx.layer.convolution_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"Im2col is supported for 4-D inputs, got {shape_text(x.shape)}")
    require_known(ctx, x.shape, (1, 2, 3), "the shape")
    kernel = spatial_values(ctx, p, 2, "kernel", None)
    stride = spatial_values(ctx, p, 2, "stride", 1)
    pad = spatial_values(ctx, p, 2, "pad", 0)
    dilation = list(p.dilation) or [1]
    dilation = dilation * 2 if len(dilation) == 1 else dilation
    sizes = [(n + 2 * pd - (d * (k - 1) + 1)) // s + 1 for n, k, s, pd, d in zip(x.shape[2:], kernel, stride, pad, dilation)]
    if any(o <= 0 for o in sizes):
        raise ctx.error(f"kernel {kernel} does not fit the input {shape_text(x.shape)}")
    node = ctx.call(M.im2col, x.node, tuple(kernel), tuple(dilation), tuple(pad), tuple(stride), tuple(sizes))
    return [Blob(node, (x.shape[0], x.shape[1] * kernel[0] * kernel[1], *sizes))]


@converter("BatchReindex")
def batch_reindex(ctx, bottoms):
    check_bottoms(ctx, bottoms, 2)
    x, index = bottoms
    if len(index.shape) != 1:
        raise ctx.error(f"the index bottom must be 1-D, got {shape_text(index.shape)}")
    return [Blob(ctx.call(M.batch_reindex, x.node, index.node), (index.shape[0], *x.shape[1:]))]


@converter("Filter")
def filter_(ctx, bottoms):
    """Keeps the items (axis 0) whose selector (the last bottom) is non-zero: the batch size of
    the tops depends on the data."""
    check_bottoms(ctx, bottoms, at_least=2)
    if len(ctx.layer.top) != len(bottoms) - 1:
        raise ctx.error("Filter needs one top per bottom but the last (the selector)")
    selector = bottoms[-1]
    if len(selector.shape) > 1 and any(d != 1 for d in selector.shape[1:]):
        raise ctx.error(f"the selector must be (N) or (N, 1, ...), got {shape_text(selector.shape)}")
    picked = ctx.call(M.filter_items, selector.node, *[b.node for b in bottoms[:-1]])
    return [Blob(ctx.call(operator.getitem, picked, i), (None, *b.shape[1:])) for i, b in enumerate(bottoms[:-1])]


@converter("Crop")
def crop(ctx, bottoms):
    p = ctx.layer.crop_param
    check_bottoms(ctx, bottoms, 2)
    x, ref = bottoms
    if len(x.shape) != len(ref.shape):
        raise ctx.error(f"bottoms of {len(x.shape)} and {len(ref.shape)} axes")
    axis = axis_index(ctx, p.axis, len(x.shape))
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
    require_known(ctx, x.shape, range(axis, len(x.shape)), "cropping")
    require_known(ctx, ref.shape, range(axis, len(ref.shape)), "cropping")
    for i, (o, n, m) in enumerate(zip(offsets, x.shape[axis:], ref.shape[axis:])):
        if o + m > n:
            raise ctx.error(f"axis {axis + i}: offset {o} + size {m} exceed the input's {n}")
    sizes = tuple(ref.shape[axis:])
    shape = (*x.shape[:axis], *sizes)
    return [Blob(ctx.call(M.crop, x.node, axis, tuple(offsets), sizes), shape)]


@converter("Permute")
def permute(ctx, bottoms):
    """SSD's Permute: ``order`` names the new axis order; axes it leaves out follow in order."""
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    n = len(x.shape)
    order = [int(o) for o in ctx.layer.permute_param.order]
    if len(set(order)) != len(order) or any(o >= n for o in order):
        raise ctx.error(f"order {order} is not a permutation of the {n} axes")
    order += [a for a in range(n) if a not in order]
    if order[0] != 0:
        raise ctx.error("moving the batch axis is not supported")
    return [Blob(ctx.call(torch.permute, x.node, tuple(order)), tuple(x.shape[a] for a in order))]


@converter("ShuffleChannel")
def shuffle_channel(ctx, bottoms):
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    group = int(ctx.layer.shuffle_channel_param.group)
    require_known(ctx, x.shape, (1,), "the channel count")
    if len(x.shape) < 2 or group <= 0 or x.shape[1] % group:
        raise ctx.error(f"group {group} must divide the channels of {shape_text(x.shape)}")
    return [Blob(ctx.call(M.shuffle_channel, x.node, group), x.shape)]
