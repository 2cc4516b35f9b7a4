"""BVLC's recurrent layers, LSTM and RNN, unrolled over time (run with their blobs; not LSUV targets).
"""

from __future__ import annotations

import math
import operator


from .. import modules as M
from ..context import Blob
from .common import filler_or, require_known, shape_text
from .registry import converter


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
        raise ctx.error(f"x must be (T, N, ...), got {shape_text(x.shape)}")
    require_known(ctx, x.shape, range(1, len(x.shape)), "the input size")
    streams, size, hidden = x.shape[1], math.prod(x.shape[2:]), int(p.num_output)
    if hidden <= 0:
        raise ctx.error("num_output must be positive")
    if len(cont.shape) != 2 or cont.shape[1] != streams:
        raise ctx.error(f"cont must be (T, {streams}), got {shape_text(cont.shape)}")
    for state in states:
        if tuple(state.shape[1:]) != (streams, hidden):
            raise ctx.error(f"an initial state must be (1, {streams}, {hidden}), got {shape_text(state.shape)}")
    gates = 4 * hidden if lstm else hidden
    names = ["W_xc", "b_c"] if lstm else ["W_xh", "b_h"]
    shapes = [(gates, size), (gates,)]
    static_size = None
    if static is not None:
        if len(static.shape) < 2 or static.shape[0] != streams and static.shape[0] is not None:
            raise ctx.error(f"x_static must be (N, ...) with N = {streams}, got {shape_text(static.shape)}")
        require_known(ctx, static.shape, range(1, len(static.shape)), "the static input size")
        static_size = math.prod(static.shape[1:])
        names.append("W_xc_static" if lstm else "W_xh_static")
        shapes.append((gates, static_size))
    names += ["W_hc"] if lstm else ["W_hh", "W_ho", "b_o"]
    shapes += [(gates, hidden)] if lstm else [(hidden, hidden), (hidden, hidden), (hidden,)]
    fillers = [filler_or(p, "bias_filler", 0.0) if n.startswith("b_") else filler_or(p, "weight_filler", 0.0)
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
