"""What the account says about the parameters no target layer of a TorchScript graph holds.

Each such parameter is skipped; the reason names the ops that use it. A matrix used by a
matrix op the tool does not split (``matmul``, ``bmm``, ``einsum``, a fused attention
kernel, ``linear`` on a computed weight) is marked ``linear``, which ``--strict`` refuses.
"""

from __future__ import annotations

from .program import Const, Op, Program

# Ops that pass a tensor on unchanged in value (a view, a slice, a cast): the use behind them counts.
_PASS_THROUGH = {
    "aten::t", "aten::transpose", "aten::permute", "aten::slice", "aten::select", "aten::narrow", "aten::view",
    "aten::reshape", "aten::to", "aten::contiguous", "aten::split", "aten::chunk", "aten::unsafe_chunk",
    "aten::unflatten", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::type_as", "aten::detach",
    "prim::ListUnpack", "prim::TupleUnpack", "aten::__getitem__", "aten::split_with_sizes", "aten::unbind",
}
_MATRIX_OPS = {
    "aten::matmul", "aten::mm", "aten::bmm", "aten::einsum", "aten::linear", "aten::addmm", "aten::baddbmm",
    "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution", "aten::convolution",
    "aten::_native_multi_head_attention", "aten::_transformer_encoder_layer_fwd",
}


def _ops(ops: list[Op]):
    for op in ops:
        yield op
        for block in op.blocks:
            yield from _ops(block.ops)


def parameter_uses(program: Program, paths: set[str]) -> dict[str, set[str]]:
    """Parameter path -> the kinds of the ops that consume it (through views and slices)."""
    origin: dict[int, str] = {}
    uses: dict[str, set[str]] = {p: set() for p in paths}
    for op in _ops(program.body.ops):
        if op.role == "read" and op.key in paths:
            for v in op.outputs:
                origin[v] = op.key
            continue
        sources = {origin[a] for a in op.args if not isinstance(a, Const) and a in origin}
        for path in sources:
            if op.kind in _PASS_THROUGH:
                for v in op.outputs:
                    origin[v] = path
            else:
                uses[path].add(op.kind)
    return uses


def skipped_parameters(script_module, program: Program) -> list[dict]:
    """name / shape / reason / linear of every parameter no target layer holds."""
    held = set()
    for calls in program.layers.values():
        for call in calls:
            held.add(call.weight_path)
            held.update(call.extra_params.values())
            if call.bias_path is not None:
                held.add(call.bias_path)
    held |= {program.param_slices[k][0] for k in held if k in program.param_slices}  # q / kv rows: their layers
    params = [(n, p) for n, p in script_module.named_parameters() if n not in held]
    uses = parameter_uses(program, {n for n, _ in params})
    out = []
    for name, p in params:
        kinds = sorted(uses.get(name, ()))
        linear = p.dim() >= 2 and any(k in _MATRIX_OPS for k in kinds)
        if not kinds:
            reason = "not used by the inlined forward graph"
        elif any("embedding" in k for k in kinds):
            reason = "embedding table: not a linear map"
        elif any("norm" in k for k in kinds):
            reason = "normalization parameter: not a linear map"
        elif linear:
            reason = f"used by {', '.join(kinds)}, which the tool does not split into linear maps"
        else:
            reason = f"not a linear map (used by {', '.join(kinds)})"
        out.append({"name": name, "shape": list(p.shape), "reason": reason, "linear": linear})
    return out


def input_types(program: Program) -> dict[str, tuple[str, int | None]]:
    """Input name -> (dtype, exclusive bound) for inputs the graph uses as integer ids.

    TorchScript records no input dtypes in a saved file, but an input that reaches the
    ``indices`` of ``aten::embedding`` (through views) is an int64 id below the table size.
    An input named like a mask (``attention_mask``) is an int64 0/1 mask.
    """
    from .program import InputDef  # noqa: F401 - documents what program.inputs hold

    origin: dict[int, str] = {d.value_id: d.name for d in program.inputs}
    reads: dict[int, str] = {}
    found: dict[str, tuple[str, int | None]] = {}
    tensors = {**program.tensors, **program.params}
    for op in _ops(program.body.ops):
        if op.role == "read":
            for v in op.outputs:
                reads[v] = op.key
            continue
        args = [a for a in op.args if not isinstance(a, Const)]
        if op.kind in _PASS_THROUGH:
            for a in args:
                if a in origin:
                    for v in op.outputs:
                        origin.setdefault(v, origin[a])
            continue
        if op.kind == "aten::embedding" and len(op.args) >= 2:
            weight, indices = op.args[0], op.args[1]
            name = origin.get(indices) if not isinstance(indices, Const) else None
            table = tensors.get(reads.get(weight)) if not isinstance(weight, Const) else None
            if name is not None and name not in found:
                found[name] = ("int64", int(table.shape[0]) if table is not None else None)
    for d in program.inputs:
        if d.name not in found and "mask" in d.name.lower():
            found[d.name] = ("int64", None)
    return found
