"""The fast path: a Program without layers inside control flow as a ``torch.fx.GraphModule``.

Every op becomes one fx node calling the same callable the interpreter would (an aten
overload, a structural helper or a one-node TorchScript function), every target layer a
``call_module`` node, every attribute / tensor constant a ``get_attr`` node. ``prim::If`` /
``prim::Loop`` nodes that hold no target layer (shape asserts, loops over sizes) become one
opaque node each, run by the interpreter, so the engine's fx walker handles the rest.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .interpreter import BatchErrors, ProgramModule, RootRef, make_control_flow_call
from .program import Const

_LITERALS = (bool, int, float, complex, str, type(None), torch.device, torch.dtype, torch.memory_format, torch.layout)


def _is_literal(value) -> bool:
    if isinstance(value, _LITERALS):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_literal(v) for k, v in value.items())
    return False


class ScriptGraphModule(BatchErrors, fx.GraphModule):
    """The translated forward graph; the batch's errors are DataErrors (see :class:`BatchErrors`)."""


def to_graph_module(holder: ProgramModule) -> fx.GraphModule:
    program = holder.program
    blockers = program.fx_blockers
    if blockers:
        raise ValueError("; ".join(blockers))
    graph = fx.Graph()
    env: dict[int, object] = {}
    root = RootRef()
    objects: dict[int, str] = {}

    def arg(a):
        if not isinstance(a, Const):
            return env[a]
        if _is_literal(a.value):
            return a.value
        name = objects.get(id(a.value))
        if name is None:
            name = f"_ts_object{len(objects)}"
            objects[id(a.value)] = name
            object.__setattr__(holder, name, a.value)
        return graph.get_attr(name)

    for d in program.inputs:
        env[d.value_id] = graph.placeholder(_identifier(d.name))
    for op in program.body.ops:
        if op.role == "read":
            node = graph.get_attr(holder.read_target(op.key))
        elif op.role == "layer":
            node = graph.call_module(op.key, tuple(arg(a) for a in op.args))
        elif op.role == "call":
            args = [arg(a) for a in op.args]
            kw = op.call.kw_names
            n = len(args) - len(kw)
            node = graph.call_function(op.call.fn, tuple(args[:n]), dict(zip(kw, args[n:])))
        elif op.role in ("if", "loop"):
            fn, free = make_control_flow_call(op, root, holder)
            node = graph.call_function(fn, tuple(env[v] for v in free))
        else:
            raise ValueError(f"{op.kind} can only run in the interpreter")
        unpack = op.role in ("if", "loop") or (op.call is not None and op.call.unpack) or (
            op.role == "layer" and len(op.outputs) > 1)
        if unpack:
            for i, v in enumerate(op.outputs):
                env[v] = graph.call_function(operator.getitem, (node, i))
        elif op.outputs:
            env[op.outputs[0]] = node
    (out,) = program.body.outputs
    graph.output(arg(out))
    graph.lint()
    gm = ScriptGraphModule(holder, graph, class_name="TorchScriptForward")
    for name, child in holder.named_children():  # the holder's own objects, so both views share them
        gm.add_module(name, child)
    root.module = gm
    return gm


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"input_{cleaned}"
