"""Spatial resizing of the forks: Upsample (SegNet / ENet max-unpooling and nearest) and Interp
(DeepLab / PSPNet bilinear).
"""

from __future__ import annotations

import math

from .. import modules as M
from ..context import Blob
from .common import require_known, shape_text
from .registry import converter


@converter("Upsample")
def upsample(ctx, bottoms):
    """SegNet's Upsample (two bottoms: values and the pooling mask; each value goes to the
    position its mask names, zeros elsewhere), or with one bottom nearest-neighbour by ``scale``."""
    p = ctx.layer.upsample_param
    if len(bottoms) not in (1, 2):
        raise ctx.error("Upsample takes one bottom, or two (values and a pooling mask)")
    x = bottoms[0]
    if len(x.shape) != 4:
        raise ctx.error(f"Upsample needs a 4-D input, got {shape_text(x.shape)}")
    require_known(ctx, x.shape, (1, 2, 3), "the output size")
    scale_h = int(p.scale_h) if p.HasField("scale_h") else int(p.scale)
    scale_w = int(p.scale_w) if p.HasField("scale_w") else int(p.scale)
    if scale_h <= 0 or scale_w <= 0:
        raise ctx.error("scale must be positive")
    if len(bottoms) == 1:
        shape = (*x.shape[:2], x.shape[2] * scale_h, x.shape[3] * scale_w)
        return [Blob(ctx.call(M.upsample_nearest, x.node, scale_h, scale_w), shape)]
    mask = bottoms[1]
    if mask.shape != x.shape:
        raise ctx.error(f"the mask's shape {shape_text(mask.shape)} differs from the input's {shape_text(x.shape)}")
    height = int(p.upsample_h) if p.HasField("upsample_h") else x.shape[2] * scale_h - int(p.pad_out_h)
    width = int(p.upsample_w) if p.HasField("upsample_w") else x.shape[3] * scale_w - int(p.pad_out_w)
    if height <= 0 or width <= 0:
        raise ctx.error(f"output size {height}x{width} must be positive")
    if mask.indexes is not None and math.prod(mask.indexes) > height * width:  # Caffe aborts on such an index
        source = "×".join(map(str, mask.indexes))
        raise ctx.error(f"its pooling mask points into a {source} plane, larger than the {height}×{width} it makes "
                        "(scale, pad_out_h / pad_out_w or upsample_h / upsample_w must give the pooled input's size)")
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
        raise ctx.error(f"Interp needs a 4-D input, got {shape_text(x.shape)}")
    require_known(ctx, x.shape, (2, 3), "the output size")
    if p.pad_beg > 0 or p.pad_end > 0:
        raise ctx.error("only pad_beg, pad_end <= 0 (cropping) are supported, as in DeepLab")
    h_in, w_in = (n + p.pad_beg + p.pad_end for n in x.shape[2:])
    if h_in <= 0 or w_in <= 0:
        raise ctx.error("pad_beg / pad_end crop the whole input")
    zoom, shrink, size = p.HasField("zoom_factor"), p.HasField("shrink_factor"), p.HasField("height") and p.HasField("width")
    if len(bottoms) == 2:
        if zoom or shrink or size:
            raise ctx.error("with a second bottom the size comes from it: no factor, height or width")
        require_known(ctx, bottoms[1].shape, (2, 3), "the output size")
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
