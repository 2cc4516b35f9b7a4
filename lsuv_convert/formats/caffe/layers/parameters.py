"""Layers whose output comes from their own blobs: Embed (a lookup table) and Parameter."""

from __future__ import annotations

from .. import modules as M
from ..context import Blob
from .common import blob_and_bias, check_bottoms, filler_or
from .registry import converter


@converter("Embed")
def embed(ctx, bottoms):
    """A lookup table (input_dim x num_output) indexed by the bottom's values; not an LSUV target
    (its output is rows of the table, not a sum LSUV could scale to unit variance)."""
    p = ctx.layer.embed_param
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    rows, outputs = int(p.input_dim), int(p.num_output)
    if rows <= 0 or outputs <= 0:
        raise ctx.error("Embed needs positive input_dim and num_output")
    module = M.CaffeEmbed(rows, outputs, p.bias_term)
    roles, shapes, fillers, attrs = blob_and_bias(p, "weight", (rows, outputs), filler_or(p, "weight_filler", 0.0),
                                                   "table", (outputs,))
    values = ctx.initial_blobs(roles, shapes, fillers)
    path = ctx.add_module(module)
    ctx.attach(module, path, attrs, values, shapes)
    return [Blob(ctx.call_module(path, x.node), (*x.shape, outputs))]


@converter("Parameter")
def parameter(ctx, bottoms):
    """A learned blob as the layer's output (no bottoms); Caffe starts it at zero."""
    check_bottoms(ctx, bottoms, 0, at_least=0)
    shape = tuple(int(d) for d in ctx.layer.parameter_param.shape.dim)
    if any(d <= 0 for d in shape):
        raise ctx.error(f"parameter_param shape {shape} must have positive dims")
    module = M.CaffeParameter(shape)
    values = ctx.initial_blobs(["value"], [shape], [0.0])
    path = ctx.add_module(module)
    ctx.attach(module, path, ["value"], values, [shape])
    return [Blob(ctx.call_module(path), shape)]
