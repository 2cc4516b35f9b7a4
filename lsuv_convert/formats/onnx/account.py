"""The account of an ONNX file: every stored float tensor, named as the file names it.

The torch graph onnx2torch builds holds a file's tensors under module paths (and several target
layers may read one de-duplicated tensor), so the engine's per-parameter account would name
nodes, count shared tensors twice and miss tensors torch never holds: those only onnxruntime
regions, ``If``/``Loop`` subgraphs or post-processing after the last layer read. Here each
stored tensor (initializer, also inside subgraphs, or a ``Constant`` a layer reads) is listed
once: ``initialized`` with the layers that scaled it, ``unreached`` if none of them ran on the
batch, or ``skipped`` with the reason. Integer tensors (shapes, indices) are not parameters.
"""

from __future__ import annotations

import onnx

from ...lsuv.account import ParamAccount
from .targets import FLOAT_TYPES, TARGET_OPS, find_targets, graph_view, node_label

RECURRENT = ("LSTM", "GRU", "RNN")


def file_account(model: onnx.ModelProto, plan, label_of: dict[str, str], reports) -> list[ParamAccount]:
    """``plan``: the targets torch initialized (with ``plan.skipped``: (label, why) of the layers
    left out); ``label_of``: report name (module path) -> target label; ``reports``: the engine's
    LayerReports."""
    g = graph_view(model)
    ran = {label_of.get(r.name, r.name): r for r in reports}
    readers: dict[str, list[tuple[str, object]]] = {}  # stored tensor -> (layer label, target)
    for target in plan.targets:
        first = target.shares_weight_with or target.label  # a shared weight is scaled at its first use
        for slot in target.slots():
            readers.setdefault(slot.source, []).append((first, target))
    why_left = dict(plan.skipped)
    left_out: dict[str, tuple[str, str]] = {}  # stored tensor -> (layer label, why it is not initialized)
    for target in find_targets(model).targets:
        label = node_label(g.nodes[target.node_index])
        reason = why_left.get(label)
        if reason is None:
            continue
        for slot in target.slots():
            left_out.setdefault(slot.source, (label, reason))
    for target in plan.tied:
        left_out.setdefault(target.weight.source, (target.label, "its weight is tied to a node that is not a layer; left as it is"))

    account: list[ParamAccount] = []
    stored = [(t.name, t) for t in model.graph.initializer]
    stored += [(source, g.stored(source)) for source in readers if source in g.constants]
    for name, tensor in stored:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        shape = [int(d) for d in tensor.dims]
        numel = _numel(shape)
        if name in readers:
            layers = list(dict.fromkeys(label for label, _ in readers[name]))
            done = [ran[label] for label in layers if label in ran]
            linear = any(slot.kind == "weight" and slot.source == name for _, t in readers[name] for slot in t.slots())
            if done:
                before, after = [r.var_before for r in done], [r.var_after for r in done]
                account.append(ParamAccount(name, shape, numel, "initialized", linear=linear, layers=layers,
                                            var_before=before[0] if len(before) == 1 else before,
                                            var_after=after[0] if len(after) == 1 else after))
            else:
                account.append(ParamAccount(name, shape, numel, "unreached", linear=linear, layers=layers,
                                            reason="the batch never ran this layer: keeps its pre-init, unscaled"))
        elif name in left_out:
            label, reason = left_out[name]
            account.append(ParamAccount(name, shape, numel, "skipped", linear=True, layers=[label],
                                        reason=f"layer {label!r} is not initialized: {reason}"))
        else:
            account.append(ParamAccount(name, shape, numel, "skipped", reason=_why_not(g, name)))
    for owner, name, tensor, linear in _subgraph_tensors(model.graph):
        shape = [int(d) for d in tensor.dims]
        account.append(ParamAccount(name, shape, _numel(shape), "skipped", linear=linear,
                                    reason=f"inside the subgraph of {owner}: subgraphs run in onnxruntime"))
    return account


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _why_not(g, name: str) -> str:
    users, exposed = g.users(name)
    ops = sorted({g.nodes[i].op_type for i, _ in users})
    if any(op in RECURRENT for op in ops):
        return "recurrent layer weight: runs in onnxruntime, not split into linear maps by the tool"
    if not ops:
        return "a graph output, read by no node" if exposed else "read by no node"
    return f"not a conv / linear weight (read by {', '.join(ops)})"


def _subgraph_tensors(graph):
    """(owner, name, tensor, read by a layer op) for each float initializer of every subgraph."""
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                owner = f"{node.op_type} {node_label(node)!r}"
                layer_inputs = {n for inner in sub.node if inner.op_type in TARGET_OPS for n in inner.input[1:]}
                for tensor in sub.initializer:
                    if tensor.data_type in FLOAT_TYPES:
                        yield owner, tensor.name, tensor, tensor.name in layer_inputs
                yield from _subgraph_tensors(sub)
