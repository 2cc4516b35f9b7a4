"""Nodes torch can't express run in onnxruntime, inside the torch graph.

onnx2torch has no converter for many ops and op versions (old opsets, If / Loop / Scan with their
subgraphs, RNN / LSTM / GRU, com.microsoft contrib ops, ...). Refusing the whole model for one
such node is needless: onnxruntime runs every op it knows. So in the working copy handed to
onnx2torch, each run of consecutive nodes that can't be converted becomes one node of a private
domain whose converter (registered through onnx2torch's registry) is :class:`OrtRegion`: a
module that evaluates that piece of the graph with an onnxruntime session on its inputs.

Consecutive in the (topologically sorted) node list means a region never needs a value computed
after it, so replacing it by one node keeps the graph acyclic. A region holds, as a small ONNX
model, its nodes (subgraphs included), the initializers they read (also those a subgraph reads
from the outer scope) and the model's opsets; its inputs are the other values it reads, its
outputs the values later nodes or the graph outputs read.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from onnx2torch.node_converters import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import converters

REGION_DOMAIN = "lsuv_convert_ort"  # no dots: onnx2torch prefixes module names with the domain
REGION_OP = "Region"
STANDARD = ("", "ai.onnx")
PRIVATE = (REGION_DOMAIN, converters.FIX_DOMAIN)


class OrtRegion(nn.Module):
    """A piece of the ONNX graph evaluated by onnxruntime (one session per input signature)."""

    def __init__(self, model_bytes: bytes, input_names: list[str], output_names: list[str], label: str):
        super().__init__()
        self.model_bytes = model_bytes
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.label = label
        self._sessions: dict = {}

    def __getstate__(self):  # sessions can't be pickled or deep-copied; they are rebuilt on use
        state = self.__dict__.copy()
        state["_sessions"] = {}
        return state

    def extra_repr(self) -> str:
        return f"{self.label!r}, inputs={self.input_names}, outputs={self.output_names}"

    def _session(self, arrays: list[np.ndarray]):
        import onnxruntime as ort

        model = onnx.ModelProto()
        model.ParseFromString(self.model_bytes)
        del model.graph.input[:]
        for name, array in zip(self.input_names, arrays):
            elem = helper.np_dtype_to_tensor_dtype(array.dtype)
            model.graph.input.append(helper.make_tensor_value_info(name, elem, [None] * array.ndim))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def forward(self, *inputs):
        device = next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
        arrays = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in inputs]
        key = tuple((a.dtype.str, a.ndim) for a in arrays)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._session(arrays)
        values = session.run(self.output_names, dict(zip(self.input_names, arrays)))
        out = tuple(torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in values)
        return out[0] if len(out) == 1 else out


def _convert_region(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attrs = {a.name: a for a in node.proto.attribute}
    model_bytes = numpy_helper.to_array(attrs["model"].t).tobytes()
    label = attrs["label"].s.decode() if "label" in attrs else node.name
    module = OrtRegion(model_bytes, list(node.input_values), list(node.output_values), label)
    return OperationConverterResult(module, onnx_mapping_from_node(node))


add_converter(operation_type=REGION_OP, version=1, domain=REGION_DOMAIN)(_convert_region)


# ------------------------------------------------------------------------------ finding regions


def subgraph_reads(node) -> set[str]:
    """Names a node's subgraphs (If / Loop / Scan bodies, recursively) read from the outer scope."""
    found: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
        for g in graphs:
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            reads: set[str] = set()
            for inner in g.node:
                reads.update(n for n in inner.input if n)
                reads.update(subgraph_reads(inner))
                defined.update(inner.output)
            reads.update(o.name for o in g.output)
            found.update(reads - defined)
    return found


def node_reads(node) -> list[str]:
    return [n for n in node.input if n] + sorted(subgraph_reads(node) - set(node.input))


def has_subgraph(node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def why_unconvertible(node, graph: OnnxGraph, opsets: dict[str, int], unique_name: str, probe: bool = True) -> str | None:
    """None if onnx2torch converts ``node`` (as the working copy will hand it over), else why not.
    Without ``probe``, only what is known without calling the converter (domain, subgraphs, a
    registered converter): the converter's own refusal then shows when the graph is converted."""
    domain = node.domain
    version = opsets.get(domain)
    if domain not in STANDARD + PRIVATE:
        return f"op {node.op_type} of domain {domain!r} has no torch converter"
    if has_subgraph(node):
        return f"op {node.op_type} (opset {version}) has subgraphs"
    try:
        converter = get_converter(operation_type=node.op_type, version=version, domain=domain)
    except NotImplementedError:
        return f"op {node.op_type} (opset {version}) has no torch converter"
    if not probe:
        return None
    try:
        converter(OnnxNode(node, unique_name=unique_name), graph)
    except Exception as exc:  # noqa: BLE001 - a converter refusing these attributes: run it in onnxruntime
        text = str(exc).strip().splitlines()
        return f"op {node.op_type} (opset {version}): torch converter refused it ({text[0] if text else type(exc).__name__})"
    return None


def find_unconvertible(work: onnx.ModelProto, probe: bool = True) -> dict[int, str]:
    """{node index in ``work``: why onnx2torch can't convert it}. With ``probe``, every node's
    converter is tried (building its module, weights included); without, only what is known
    without calling it (see :func:`why_unconvertible`)."""
    from .lean_conversion import infer_shapes_in_place, modules_without_random_init

    if probe:
        try:
            infer_shapes_in_place(work)
        except Exception:  # noqa: BLE001 - best effort: converters that need shapes then refuse
            pass
    graph = OnnxGraph(work.graph)
    opsets = {o.domain: o.version for o in work.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 0))
    reasons = {}
    with modules_without_random_init():
        for k, (name, onnx_node) in enumerate(graph.nodes.items()):
            why = why_unconvertible(onnx_node.proto, graph, opsets, name, probe)
            if why is not None:
                reasons[k] = why
    return reasons


def runs(indices: list[int]) -> list[list[int]]:
    """Consecutive indices grouped: [[3, 4, 5], [9]]."""
    groups: list[list[int]] = []
    for i in sorted(indices):
        if groups and groups[-1][-1] == i - 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def replace_regions(work: onnx.ModelProto, source: onnx.ModelProto, unconvertible: dict[int, str],
                    domains: dict[str, str]) -> list[dict]:
    """Replace each run of unconvertible nodes of ``work`` by one region node (in place).

    ``domains`` maps a node's first output to its domain in the source file (the working copy
    may have moved it to a private domain). Returns one description per region."""
    graph = work.graph
    nodes = list(graph.node)
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    later_reads: list[set[str]] = [set() for _ in nodes]
    acc: set[str] = set(outputs)
    for k in range(len(nodes) - 1, -1, -1):
        later_reads[k] = set(acc)
        acc.update(node_reads(nodes[k]))
    opsets = [o for o in source.opset_import if o.domain not in PRIVATE]
    regions, replaced = [], {}
    for number, group in enumerate(runs(list(unconvertible))):
        members = [_copy(nodes[k], domains) for k in group]
        produced = {o for n in members for o in n.output if o}
        reads: list[str] = []
        for n in members:
            reads.extend(r for r in node_reads(n) if r not in produced and r not in reads)
        inner_inits = [initializers[r] for r in reads if r in initializers]
        inputs = [r for r in reads if r not in initializers]
        exposed = [o for n in members for o in n.output if o and o in later_reads[group[-1]]]
        if not exposed:  # nothing after it reads it
            replaced.update({k: None for k in group})
            continue
        first = members[0]
        label = first.name or first.output[0]
        sub = helper.make_graph(
            members, f"region_{number}",
            [onnx.ValueInfoProto(name=i) for i in inputs], [onnx.ValueInfoProto(name=o) for o in exposed],
            inner_inits,
        )
        sub_model = helper.make_model(sub, opset_imports=opsets)
        sub_model.ir_version = max(source.ir_version, 4)
        payload = np.frombuffer(sub_model.SerializeToString(), dtype=np.uint8)
        region = helper.make_node(
            REGION_OP, inputs, exposed, name=f"onnxruntime:{label}", domain=REGION_DOMAIN,
            model=numpy_helper.from_array(payload.copy(), "model"), label=label,
        )
        replaced[group[0]] = region
        for k in group[1:]:
            replaced[k] = None
        regions.append({
            "label": label,
            "nodes": [(n.name or n.output[0], n.op_type) for n in members],
            "reasons": [unconvertible[k] for k in group],
            "outputs": exposed,
            "members": members,
        })
    new_nodes = []
    for k, node in enumerate(nodes):
        if k in replaced:
            if replaced[k] is not None:
                new_nodes.append(replaced[k])
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if regions and not any(o.domain == REGION_DOMAIN for o in work.opset_import):
        work.opset_import.append(helper.make_opsetid(REGION_DOMAIN, 1))
    return regions


def _copy(node, domains: dict[str, str]) -> onnx.NodeProto:
    """The node as onnxruntime should run it: in its source domain (not our private one)."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    if out.output and out.output[0] in domains:
        out.domain = domains[out.output[0]]
    if out.domain == "ai.onnx":
        out.domain = ""
    return out
