"""ONNX ModelProto -> torch.fx.GraphModule via onnx2torch, fixed around its gaps (not forked).

0. The working copy holds only what leads to a target layer (:func:`prepare_working`): nodes after
   the last layer that feed none are dropped; every target weight/bias held by a Constant node or
   reached through Identity/Transpose/Cast/Reshape becomes a plain initializer with the value the
   layer sees; runs of nodes onnx2torch can't convert become onnxruntime regions (:mod:`.regions`).
1. A *working copy* of the model is handed to onnx2torch (the saved model never sees it):
   inputs that are Identity copies of initializers read the initializer itself (onnx2torch
   issue #156: torch's TorchScript-based exporter de-duplicates equal initializers behind
   Identity nodes and onnx2torch then fails with ``KeyError: 'onnx::Conv_...'``), a conv's
   ``auto_pad`` (which onnx2torch refuses) is spelled out as explicit pads, and nodes onnx2torch
   refuses or converts wrongly (Reshape allowzero=1; reductions with an ``axes`` attribute,
   whose negative axes it mishandles; LayerNormalization; Flatten of low-rank inputs) move to a private domain served by our converters.
2. Missing op versions come from :mod:`.converters` (registered on import).
3. The GraphModule is adjusted: BatchNorm / Dropout pinned to inference, every target layer
   becomes a module holding its initializer exactly as stored (``.weight``/``.bias``), a
   fused MatMul + Add becomes one linear module, and targets that must keep one initializer
   share one Parameter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ...errors import ModelFormatError, first_line
from . import converters
from .modules import GemmTarget, MatMulTarget, pin_inference
from .lean_conversion import infer_shapes_in_place, modules_without_random_init, onnx2torch_infers_without_weights
from .targets import TargetPlan, effective_value, graph_view

STANDARD_DOMAINS = ("", "ai.onnx")


def working_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnx2torch should see it (same nodes and names, Identity copies resolved)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return fix_for_onnx2torch(work)


def fix_for_onnx2torch(work: onnx.ModelProto) -> onnx.ModelProto:
    """Identity copies of initializers resolved, auto_pad spelled out, nodes onnx2torch refuses or
    converts wrongly moved to our private domain (``work`` is changed; the result is returned)."""
    graph = work.graph
    initializers = {init.name for init in graph.initializer}
    produced = {out for node in graph.node for out in node.output}
    alias: dict[str, str] = {}
    for node in graph.node:
        if node.domain == "ai.onnx":
            node.domain = ""
        if node.op_type == "Identity" and node.domain == "" and node.input and node.output:
            src = node.input[0]
            if src in initializers and src not in produced:
                alias[node.output[0]] = src
            elif src in alias:
                alias[node.output[0]] = alias[src]
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in alias:
                node.input[j] = alias[name]
    graph_outputs = {out.name for out in graph.output}
    read = {name for node in graph.node for name in node.input} | graph_outputs
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias and n.output[0] not in read)]
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    opset = standard_opset(work)
    same_pads = [n for n in graph.node if n.op_type == "Conv" and n.domain == "" and _str_attr(n, "auto_pad") in ("SAME_UPPER", "SAME_LOWER", "VALID")]
    if same_pads or any(needs_fix(n, opset) for n in graph.node):
        try:  # shapes for explicit pads, and for onnx2torch's converters downstream of renamed nodes
            infer_shapes_in_place(work)
        except Exception:  # noqa: BLE001 - best effort; onnx2torch infers again
            pass
        _explicit_conv_pads(work)
        for node in work.graph.node:
            if needs_fix(node, opset):
                node.domain = converters.FIX_DOMAIN
        if not any(o.domain == converters.FIX_DOMAIN for o in work.opset_import):
            work.opset_import.append(onnx.helper.make_opsetid(converters.FIX_DOMAIN, 1))
    for entry in work.opset_import:
        if entry.domain == "ai.onnx":
            entry.domain = ""
    return work


def standard_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)


_ATTRIBUTE_AXES_REDUCE = {  # op -> last opset whose version takes ``axes`` as an attribute
    "ReduceMax": 17, "ReduceMin": 17, "ReduceProd": 17, "ReduceMean": 17, "ReduceL1": 17, "ReduceL2": 17,
    "ReduceLogSum": 17, "ReduceLogSumExp": 17, "ReduceSumSquare": 17, "ReduceSum": 12,
}


def needs_fix(node, opset: int) -> bool:
    """Nodes onnx2torch refuses or converts wrongly, converted by our own modules instead:
    Reshape with allowzero=1 (refused), reductions with an ``axes`` attribute (onnx2torch
    sorts negative axes before reducing one at a time, so ReduceMax(axes=[-2, -1], keepdims=0)
    reduces the wrong dimension), LayerNormalization (onnx2torch takes the normalized shape from
    inferred shapes, ``[0]`` for a dynamic one) and Gemm / Dropout of opsets before 9 / 10."""
    if node.domain != "":
        return False
    if node.op_type == "Reshape":
        return _int_attr(node, "allowzero") == 1
    if node.op_type in ("LayerNormalization", "Flatten"):
        return True
    if node.op_type == "Gemm":
        return opset < 9
    if node.op_type == "Dropout":
        return opset < 10
    return opset <= _ATTRIBUTE_AXES_REDUCE.get(node.op_type, -1)


def _str_attr(node, name: str, default: str = "") -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode()
    return default


def _explicit_conv_pads(work: onnx.ModelProto) -> None:
    """auto_pad SAME_UPPER / SAME_LOWER / VALID (which onnx2torch refuses) as explicit pads, where
    the input's spatial size is known; the ONNX spec's formula."""
    graph = work.graph
    shapes = {}
    for value in list(graph.input) + list(graph.value_info):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weights = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        mode = _str_attr(node, "auto_pad")
        if node.op_type != "Conv" or mode not in ("SAME_UPPER", "SAME_LOWER", "VALID"):
            continue
        spatial = shapes.get(node.input[0], [])[2:]
        kernel = weights.get(node.input[1], [])[2:]
        if not spatial or None in spatial or len(kernel) != len(spatial):
            continue  # left to onnx2torch, which reports it
        rank = len(spatial)
        strides = _ints_attr(node, "strides") or [1] * rank
        dilations = _ints_attr(node, "dilations") or [1] * rank
        begins, ends = [], []
        for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
            total = 0 if mode == "VALID" else max(0, (-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size)
            small = total // 2
            begins.append(small if mode != "SAME_LOWER" else total - small)
            ends.append(total - begins[-1])
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept + [onnx.helper.make_attribute("pads", begins + ends)])


def _ints_attr(node, name: str) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return []


def _int_attr(node, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def check_convertible(work: onnx.ModelProto, source) -> None:
    """Every node has an onnx2torch converter for its op version, or one clear error."""
    from onnx2torch.node_converters import get_converter

    opsets = {o.domain: o.version for o in work.opset_import}
    for node in work.graph.node:
        label = node.name or (node.output[0] if node.output else node.op_type)
        if node.domain not in STANDARD_DOMAINS + (converters.FIX_DOMAIN,):
            raise ModelFormatError(
                f"node {label!r} uses op {node.op_type!r} of custom domain {node.domain!r}; only standard ONNX ops can be converted",
                path=source,
            )
        version = opsets.get(node.domain)
        if version is None:
            raise ModelFormatError(f"node {label!r}: the model imports no opset for domain {node.domain!r}", path=source)
        try:
            get_converter(operation_type=node.op_type, version=version, domain=node.domain)
        except NotImplementedError:
            raise ModelFormatError(
                f"node {label!r}: op {node.op_type} (opset {version}) has no torch converter; it can't be initialized",
                path=source,
            ) from None


@dataclass
class Converted:
    module: nn.Module  # torch.fx.GraphModule computing the model
    paths: dict[str, str]  # target label -> module path
    tensors: dict[str, tuple[str, int]]  # ONNX tensor -> (module path, output index) computing it
    node_names: dict[str, str]  # module path -> ONNX node name (for messages)
    notes: list[str]


def checked_working_copy(model: onnx.ModelProto, source) -> onnx.ModelProto:
    """The working copy, after checking that every node can be converted (one clear error if not)."""
    work = working_copy(model)
    check_convertible(work, source)
    return work


def convert(model: onnx.ModelProto, work: onnx.ModelProto, plan: TargetPlan, source) -> Converted:
    """The torch graph of ``model`` (from its checked working copy) with its target layers installed."""
    import onnx2torch
    from onnx2torch.onnx_graph import OnnxGraph

    try:
        with warnings.catch_warnings(record=True) as caught, onnx2torch_infers_without_weights(), modules_without_random_init():
            warnings.simplefilter("always")  # onnx2torch's warnings go to the log, not stderr
            gm = onnx2torch.convert(work)
    except Exception as exc:
        raise ModelFormatError(f"onnx2torch can't convert this model: {type(exc).__name__}: {first_line(exc)}", path=source) from exc
    work_nodes = OnnxGraph(work.graph).nodes
    unique = {node.output_values[0]: name for name, node in work_nodes.items() if node.output_values}
    outputs_of = {name: [o for o in node.output_values] for name, node in work_nodes.items()}
    labels = {name: _node_label(node.proto) for name, node in work_nodes.items()}
    del work
    notes = [f"onnx2torch: {text}" for text in dict.fromkeys(str(w.message) for w in caught)]
    pinned = pin_inference(gm)
    if pinned:
        notes.append(f"{pinned} BatchNorm/Dropout module(s) pinned to inference semantics, as the ONNX ops define")
    paths = _install_targets(gm, model, plan, unique)
    _drop_unused(gm)
    gm.graph.lint()
    gm.recompile()
    tensors, node_names = _tensor_map(gm, model, plan, outputs_of, labels, paths)
    return Converted(gm, paths, tensors, node_names, notes)


def _node_label(node) -> str:
    if node.domain == "lsuv_convert_ort":
        return f"onnxruntime region from {node.name.split(':', 1)[-1]!r}"
    return node.name or (node.output[0] if node.output else node.op_type)


def _tensor_map(gm, model, plan: TargetPlan, outputs_of: dict[str, list[str]], labels: dict[str, str],
                paths: dict[str, str]):
    """Which module computes each ONNX tensor (fused MatMul + Add: the MatMul module gives the Add's output)."""
    modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    nodes = list(model.graph.node)
    fused = {nodes[t.fused_add].output[0]: paths[t.label] for t in plan.targets if t.fused_add is not None}
    fused_matmul = {nodes[t.node_index].output[0] for t in plan.targets if t.fused_add is not None}
    tensors: dict[str, tuple[str, int]] = {}
    node_names: dict[str, str] = {}
    for path, outs in outputs_of.items():
        if not outs or outs[0] in fused_matmul:
            continue
        path = fused.get(outs[0], path)
        if path not in modules:
            continue
        node_names.setdefault(path, labels.get(path, path))
        for k, out in enumerate(outs):
            if out:
                tensors[out] = (path, k)
    for label, path in paths.items():
        node_names[path] = label
    return tensors, node_names


def _tensor(model_inits: dict, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(model_inits[name]), copy=True))


def _seen(g, slot) -> torch.Tensor:
    """A slot's value as its layer sees it (stored tensor with the chain applied)."""
    return torch.from_numpy(np.array(effective_value(g.stored(slot.source), slot.chain), copy=True))


def _install_targets(gm, model: onnx.ModelProto, plan: TargetPlan, unique: dict[str, str]) -> dict[str, str]:
    nodes = list(model.graph.node)
    inits = {i.name: i for i in model.graph.initializer}
    g = graph_view(model)
    fx_nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    paths: dict[str, str] = {}
    for t in plan.targets:
        path = unique[nodes[t.node_index].output[0]]
        fx_node = fx_nodes[path]
        if t.op in ("Conv", "ConvTranspose"):
            _split_padding(gm, path, fx_node)
        elif t.op == "Gemm":
            c_input = None
            if t.extra_c is not None and len(fx_node.args) > 2 and not _is_initializer(fx_node.args[2]):
                c_input = fx_node.args[2]
            constant_c = _tensor(inits, t.extra_c) if t.extra_c in inits else None
            bias = _seen(g, t.bias) if t.bias is not None else None
            if bias is not None and t.attrs["beta"] != 1.0:
                bias = bias * t.attrs["beta"]
            module = GemmTarget(
                _seen(g, t.weight), bias, t.attrs["alpha"], bool(t.attrs["transA"]),
                bool(t.attrs["transB"]), beta=t.attrs["beta"], has_extra_c=t.extra_c is not None,
            )
            if constant_c is not None:
                module.register_buffer("c_const", constant_c)
            setattr(gm, path, module)
            fx_node.args = (fx_node.args[0],) + ((c_input,) if c_input is not None else ())
            fx_node.kwargs = {}
        else:  # MatMul
            bias = _seen(g, t.bias) if t.bias is not None else None
            setattr(gm, path, MatMulTarget(_seen(g, t.weight), bias))
            fx_node.args = (fx_node.args[0],)
            if t.fused_add is not None:
                add_path = unique[nodes[t.fused_add].output[0]]
                add_node = fx_nodes[add_path]
                add_node.replace_all_uses_with(fx_node)
                gm.graph.erase_node(add_node)
                delattr(gm, add_path)
        paths[t.label] = path
    _share_parameters(gm, plan, paths)
    return paths


def _is_initializer(arg) -> bool:
    return getattr(arg, "op", None) == "get_attr"


def _split_padding(gm, path: str, fx_node) -> None:
    """onnx2torch wraps a conv with asymmetric/auto padding as Sequential(pad, conv): make the
    conv itself the module at ``path`` so the engine sees it, with the pad as its own node."""
    module = gm.get_submodule(path)
    if not isinstance(module, nn.Sequential):
        return
    pad, conv = module[0], module[1]
    pad_path = f"{path}/pad"
    gm.add_module(pad_path, pad)
    setattr(gm, path, conv)
    with gm.graph.inserting_before(fx_node):
        pad_node = gm.graph.call_module(pad_path, args=fx_node.args, kwargs=fx_node.kwargs)
    fx_node.args = (pad_node,)
    fx_node.kwargs = {}


def _share_parameters(gm, plan: TargetPlan, paths: dict[str, str]) -> None:
    """Targets writing the same initializer must be one tensor in torch too."""
    owners: dict[tuple, nn.Parameter] = {}
    for t in plan.targets:
        module = gm.get_submodule(paths[t.label])
        for slot in t.slots():
            param = getattr(module, slot.kind)
            key = (slot.kind, t.weight.tensor, slot.tensor)  # same weight read twice: one layer used twice
            first = owners.setdefault(key, param)
            if first is not param:
                setattr(module, slot.kind, first)


def _drop_unused(gm) -> None:
    """Remove initializer buffers and modules that the adjusted graph no longer uses."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            owner_path, _, attr = node.target.rpartition(".")
            graph.erase_node(node)
            owner = gm.get_submodule(owner_path) if owner_path else gm
            if hasattr(owner, attr):
                delattr(owner, attr)
    used = {n.target for n in graph.nodes if n.op == "call_module"}
    for name in [name for name, _ in gm.named_children() if name not in used and name != "initializers"]:
        delattr(gm, name)


# ---------------------------------------------------------------- the working copy for a target plan

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@dataclass
class Working:
    """What onnx2torch converts for a plan, and what the log should say about it."""

    model: onnx.ModelProto  # the working copy: pruned, weights as initializers, regions in place
    plan: TargetPlan  # targets that torch holds (layers inside onnxruntime regions removed)
    regions: list[dict]
    notes: list[str]


def prepare_working(model: onnx.ModelProto, source, plan: TargetPlan | None = None, probe: bool = True) -> Working:
    """The working copy for ``model``: only what leads to a target layer, every target weight a
    plain initializer holding what the layer sees, unconvertible nodes as onnxruntime regions.
    A target layer that ends up inside a region is not initialized (``plan.skipped`` says why).
    Without ``probe``, converters are not tried beforehand (see :func:`converted_working`)."""
    from .targets import find_targets

    exclude: dict[int, str] = {}
    plan = plan if plan is not None else find_targets(model)
    while True:
        work, regions, swallowed, pruned = _working_for(model, plan, probe)
        if not swallowed:
            break
        exclude.update(swallowed)
        plan = find_targets(model, exclude)
        if not plan.targets:
            first = next(iter(exclude.items()))
            label = _node_label(model.graph.node[first[0]])
            raise ModelFormatError(
                f"every target layer would run inside onnxruntime (first: node {label!r}: {first[1]}); nothing to initialize",
                path=source,
            )
    notes = _working_notes(model, plan, regions, pruned)
    return Working(work, plan, regions, notes)


def converted_working(model: onnx.ModelProto, source, plan: TargetPlan) -> tuple[Working, Converted]:
    """The working copy and its conversion. Optimistic first: when every node has a registered
    converter, the graph is converted straight away, each converter (and its copy of the weights)
    called once; only if onnx2torch then refuses a node is each converter tried on its own, so the
    nodes it refuses run in onnxruntime regions, and the graph converted again."""
    working = prepare_working(model, source, plan, probe=False)
    try:
        return working, convert(model, working.model, working.plan, source)
    except ModelFormatError:
        pass
    working = prepare_working(model, source, plan, probe=True)
    return working, convert(model, working.model, working.plan, source)


def _working_for(model: onnx.ModelProto, plan: TargetPlan, probe: bool = True):
    from . import regions as region_mod
    from .targets import unique_name

    work = onnx.ModelProto()
    work.CopyFrom(model)
    graph = work.graph
    g = graph_view(model)
    taken = set(g.initializers) | set(g.producer) | {i.name for i in graph.input}
    seen: dict[str, str] = {}
    for t in plan.targets:  # weights held by Constant nodes or reached through chains: plain initializers
        for slot in t.slots():
            if not slot.chain and slot.constant is None:
                continue
            if slot.tensor not in seen:
                name = unique_name(f"{slot.tensor}.lsuv_seen", taken)
                taken.add(name)
                graph.initializer.append(numpy_helper.from_array(effective_value(g.stored(slot.source), slot.chain), name))
                seen[slot.tensor] = name
            graph.node[slot.node_index].input[slot.input_index] = seen[slot.tensor]
    # only what leads to a target output is converted (post-processing after the last one is not)
    needed = {t.output for t in plan.targets}
    roots = list(dict.fromkeys(t.output for t in plan.targets))
    all_nodes = list(graph.node)
    kept_index = []
    for k in range(len(all_nodes) - 1, -1, -1):
        node = all_nodes[k]
        if any(o in needed for o in node.output if o):
            kept_index.append(k)
            needed.update(region_mod.node_reads(node))
    kept_index.reverse()
    kept = [all_nodes[k] for k in kept_index]
    kept_set = set(kept_index)
    pruned = [n for k, n in enumerate(all_nodes) if k not in kept_set]
    produced = {o for n in kept for o in n.output if o}
    outputs = [o.name for o in model.graph.output if o.name in produced]  # the model's own outputs first
    covered = set(outputs)
    for node in reversed(kept):
        if any(o in covered for o in node.output if o):
            covered.update(region_mod.node_reads(node))
    outputs += [r for r in roots if r not in covered]  # then target outputs no kept output depends on
    kept_copies = []
    for node in kept:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        kept_copies.append(copy)
    pruned_info = [(n.op_type, n.name or (n.output[0] if n.output else "")) for n in pruned]
    del graph.node[:]
    graph.node.extend(kept_copies)
    old_outputs = {o.name: o for o in graph.output}
    new_outputs = []
    for name in outputs:
        value = onnx.ValueInfoProto()
        value.CopyFrom(old_outputs[name]) if name in old_outputs else setattr(value, "name", name)
        new_outputs.append(value)
    del graph.output[:]
    graph.output.extend(new_outputs)
    domains = {n.output[0]: n.domain for n in graph.node if n.output}
    work = fix_for_onnx2torch(work)
    unconvertible = region_mod.find_unconvertible(work, probe)
    regions = region_mod.replace_regions(work, model, unconvertible, domains)
    in_region = {}
    for region in regions:
        for member, why in zip(region["members"], region["reasons"]):
            for out in member.output:
                in_region[out] = why
    nodes = list(model.graph.node)
    swallowed = {}
    for t in plan.targets:
        for index in (t.node_index, t.fused_add):
            if index is not None and nodes[index].output[0] in in_region:
                swallowed[t.node_index] = f"runs inside onnxruntime: {in_region[nodes[index].output[0]]}"
    return work, regions, swallowed, pruned_info


def _working_notes(model, plan: TargetPlan, regions: list[dict], pruned: list[tuple[str, str]]) -> list[str]:
    notes = []
    for region in regions:
        names = ", ".join(f"{op} {name!r}" for name, op in region["nodes"][:4])
        more = f" and {len(region['nodes']) - 4} more" if len(region["nodes"]) > 4 else ""
        notes.append(f"onnxruntime runs {len(region['nodes'])} node(s) inside the torch graph ({names}{more}): "
                     f"{region['reasons'][0]}")
    for label, why in plan.skipped:
        notes.append(f"layer {label!r} not initialized: {why}")
    g = graph_view(model)
    for region in regions:
        for member in region["members"]:
            label = member.name or member.output[0]
            if member.op_type in RECURRENT_OPS:
                stored = [n for n in member.input[1:3] if n and g.resolve(n) is not None]
                if stored:
                    notes.append(f"layer {label!r} ({member.op_type}) not initialized: its weights are only used inside "
                                 f"onnxruntime (no torch converter for {member.op_type})")
            for inner in _subgraph_layers(member, set(g.initializers) | set(g.constants)):
                notes.append(f"layer {inner!r} inside the subgraph of {member.op_type} {label!r} not initialized: "
                             "subgraphs run in onnxruntime")
    if pruned:
        ops = ", ".join(dict.fromkeys(op for op, _ in pruned))
        notes.append(f"{len(pruned)} node(s) that feed no target layer are not converted or run ({ops})")
    return notes


def _subgraph_layers(node, outer: set[str] | None = None) -> list[str]:
    """Conv / ConvTranspose / Gemm / MatMul nodes with a stored weight inside a node's subgraphs
    (recursively): layers torch never sees."""
    found = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            stored = set(outer or ()) | {t.name for t in graph.initializer} | {
                n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
            for inner in graph.node:
                if inner.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(inner.input) > 1 and inner.input[1] in stored:
                    found.append(inner.name or inner.output[0])
                found.extend(_subgraph_layers(inner, stored))
    return found
