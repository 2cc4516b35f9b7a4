"""ONNX ModelProto -> torch.fx.GraphModule via onnx2torch, fixed around its gaps (not forked).

1. A *working copy* of the model is handed to onnx2torch (the saved model never sees it):
   inputs that are Identity copies of initializers read the initializer itself (onnx2torch
   issue #156: torch's TorchScript-based exporter de-duplicates equal initializers behind
   Identity nodes and onnx2torch then fails with ``KeyError: 'onnx::Conv_...'``), a conv's
   ``auto_pad`` (which onnx2torch refuses) is spelled out as explicit pads, and nodes onnx2torch
   refuses or converts wrongly (Reshape allowzero=1; reductions with an ``axes`` attribute,
   whose negative axes it mishandles) move to a private domain served by our converters.
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
from .targets import TargetPlan

STANDARD_DOMAINS = ("", "ai.onnx")


def working_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnx2torch should see it (same nodes and names, Identity copies resolved)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
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
    opset = next((o.version for o in work.opset_import if o.domain in STANDARD_DOMAINS), 0)
    same_pads = [n for n in graph.node if n.op_type == "Conv" and n.domain == "" and _str_attr(n, "auto_pad") in ("SAME_UPPER", "SAME_LOWER", "VALID")]
    if same_pads or any(_needs_fix(n, opset) for n in graph.node):
        try:  # shapes for explicit pads, and for onnx2torch's converters downstream of renamed nodes
            work = onnx.shape_inference.infer_shapes(work)
        except Exception:  # noqa: BLE001 - best effort; onnx2torch infers again
            pass
        _explicit_conv_pads(work)
        for node in work.graph.node:
            if _needs_fix(node, opset):
                node.domain = converters.FIX_DOMAIN
        work.opset_import.append(onnx.helper.make_opsetid(converters.FIX_DOMAIN, 1))
    for entry in work.opset_import:
        if entry.domain == "ai.onnx":
            entry.domain = ""
    return work


_ATTRIBUTE_AXES_REDUCE = {  # op -> last opset whose version takes ``axes`` as an attribute
    "ReduceMax": 17, "ReduceMin": 17, "ReduceProd": 17, "ReduceMean": 17, "ReduceL1": 17, "ReduceL2": 17,
    "ReduceLogSum": 17, "ReduceLogSumExp": 17, "ReduceSumSquare": 17, "ReduceSum": 12,
}


def _needs_fix(node, opset: int) -> bool:
    """Nodes onnx2torch refuses or converts wrongly, converted by our own modules instead:
    Reshape with allowzero=1 (refused), and reductions with an ``axes`` attribute (onnx2torch
    sorts negative axes before reducing one at a time, so ReduceMax(axes=[-2, -1], keepdims=0)
    reduces the wrong dimension)."""
    if node.domain != "":
        return False
    if node.op_type == "Reshape":
        return _int_attr(node, "allowzero") == 1
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
        with warnings.catch_warnings(record=True) as caught:  # onnx2torch's warnings go to the log, not stderr
            warnings.simplefilter("always")
            gm = onnx2torch.convert(work)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises anything; report it as one line
        raise ModelFormatError(f"onnx2torch can't convert this model: {type(exc).__name__}: {first_line(exc)}", path=source) from exc
    unique = {node.output_values[0]: name for name, node in OnnxGraph(work.graph).nodes.items() if node.output_values}
    del work
    notes = [f"onnx2torch: {text}" for text in dict.fromkeys(str(w.message) for w in caught)]
    pinned = pin_inference(gm)
    if pinned:
        notes.append(f"{pinned} BatchNorm/Dropout module(s) pinned to inference semantics, as the ONNX ops define")
    paths = _install_targets(gm, model, plan, unique)
    _drop_unused(gm)
    gm.graph.lint()
    gm.recompile()
    tensors, node_names = _tensor_map(gm, model, plan, unique, paths)
    return Converted(gm, paths, tensors, node_names, notes)


def _tensor_map(gm, model, plan: TargetPlan, unique: dict[str, str], paths: dict[str, str]):
    """Which module computes each ONNX tensor (fused MatMul + Add: the MatMul module gives the Add's output)."""
    modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    nodes = list(model.graph.node)
    fused_add = {t.fused_add: paths[t.label] for t in plan.targets if t.fused_add is not None}
    fused_matmul = {t.node_index for t in plan.targets if t.fused_add is not None}
    tensors: dict[str, tuple[str, int]] = {}
    node_names: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if i in fused_matmul or not node.output or node.output[0] not in unique:
            continue
        path = fused_add.get(i, unique[node.output[0]])
        if path not in modules:
            continue
        node_names.setdefault(path, node.name or node.output[0])
        for k, out in enumerate(node.output):
            if out:
                tensors[out] = (path, k)
    return tensors, node_names


def _tensor(model_inits: dict, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(model_inits[name]), copy=True))


def _install_targets(gm, model: onnx.ModelProto, plan: TargetPlan, unique: dict[str, str]) -> dict[str, str]:
    nodes = list(model.graph.node)
    inits = {i.name: i for i in model.graph.initializer}
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
            bias = _tensor(inits, t.bias.initializer) if t.bias is not None else None
            if bias is not None and t.attrs["beta"] != 1.0:
                bias = bias * t.attrs["beta"]
            module = GemmTarget(
                _tensor(inits, t.weight.initializer), bias, t.attrs["alpha"], bool(t.attrs["transA"]),
                bool(t.attrs["transB"]), beta=t.attrs["beta"], has_extra_c=t.extra_c is not None,
            )
            if constant_c is not None:
                module.register_buffer("c_const", constant_c)
            setattr(gm, path, module)
            fx_node.args = (fx_node.args[0],) + ((c_input,) if c_input is not None else ())
            fx_node.kwargs = {}
        else:  # MatMul
            bias = _tensor(inits, t.bias.initializer) if t.bias is not None else None
            setattr(gm, path, MatMulTarget(_tensor(inits, t.weight.initializer), bias))
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
    owners: dict[str, nn.Parameter] = {}
    for t in plan.targets:
        module = gm.get_submodule(paths[t.label])
        for slot in t.slots():
            param = getattr(module, slot.kind)
            first = owners.setdefault(slot.dest, param)
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
