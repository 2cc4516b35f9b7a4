"""Which ONNX nodes LSUV initializes, where their weights live, and what the nodes see of them.

Pure ONNX + numpy, no torch: ``load`` uses it to build the torch graph, ``save`` to write values
back, ``measure`` to find the tensors to read back from a written file.

Target layers are Conv, ConvTranspose, Gemm and MatMul whose weight is a stored tensor, wherever
the exporter put it: an initializer (also one an IR < 4 file lists as a graph input), the
``value`` of a ``Constant`` node, or either of those reached through ``Identity``, ``Transpose``,
``Cast`` or ``Reshape`` nodes (a :class:`Slot` keeps that chain, so save() writes the stored
tensor in its own layout and type). A MatMul whose only consumer is an ``Add`` of a
per-output-channel stored tensor is one linear layer (the exporters split ``nn.Linear`` on 3-D
inputs that way): the Add's tensor is its bias and its output is the layer output.

Sharing: targets whose weight input reads the *same tensor name* (a module used twice, or
weights the dynamo exporter found equal) are one layer in torch too, scaled once at its first
use. Whether a stored tensor several slots resolve to must be untied in the written file is
decided by save(), from the values actually written (see :mod:`.save`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FLOAT_TYPES = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
TARGET_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CHAIN_OPS = ("Identity", "Transpose", "Cast", "Reshape")
STANDARD = ("", "ai.onnx")


@dataclass(frozen=True)
class Step:
    """One node between a stored tensor and the layer: how the value the layer sees is made."""

    op: str  # Identity, Transpose, Cast or Reshape
    perm: tuple | None = None  # Transpose
    to: int | None = None  # Cast: onnx element type
    shape: tuple | None = None  # Reshape: the output shape (zeros resolved)
    stored_shape: tuple = ()  # shape of this step's input (what Reshape/Transpose undo to)
    stored_type: int = 0  # element type of this step's input (what Cast undoes to)


@dataclass
class Slot:
    """One tensor of a target layer (its weight or bias) and where it is stored."""

    kind: str  # "weight" or "bias"
    node_index: int  # node that reads it: the target node, or the fused Add for a MatMul bias
    input_index: int
    tensor: str  # the name that node reads
    source: str  # the stored tensor: initializer name, or the output name of its Constant node
    constant: int | None = None  # index of the Constant node holding it (None: an initializer)
    chain: tuple = ()  # Steps from the stored tensor to ``tensor``, in execution order
    dims: tuple = ()  # shape the layer sees
    elem_type: int = 0  # element type the layer sees

    @property
    def via(self) -> bool:
        """Whether the layer reads the stored tensor through other nodes (Identity, Transpose, ...)."""
        return self.tensor != self.source

    @property
    def initializer(self) -> str:  # the stored tensor's name (kept for callers that print it)
        return self.source


@dataclass
class OnnxTarget:
    label: str  # the layer's name in the log: node name (or its first output if unnamed)
    op: str
    node_index: int
    output: str  # tensor whose variance LSUV sets (the fused Add's output for MatMul + bias)
    weight: Slot
    bias: Slot | None = None
    attrs: dict = field(default_factory=dict)
    fused_add: int | None = None  # node index of the Add holding a MatMul's bias
    extra_c: str | None = None  # Gemm C that is not a per-output bias (stored tensor or tensor name): kept as is
    shares_weight_with: str | None = None  # label of the first target reading the same weight

    def slots(self) -> list[Slot]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])


@dataclass
class TargetPlan:
    targets: list[OnnxTarget]
    notes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, why it is not initialized)
    tied: list[OnnxTarget] = field(default_factory=list)  # layers whose weight a non-layer node also reads: left as they are


class _Graph:
    """Lookups over a GraphProto that the analysis needs."""

    def __init__(self, graph, initializers: dict | None = None):
        self.graph = graph
        self.nodes = list(graph.node)
        self.initializers = {init.name: init for init in graph.initializer} if initializers is None else initializers
        self.producer = {out: i for i, node in enumerate(self.nodes) for out in node.output if out}
        self.readers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(self.nodes):
            for j, name in enumerate(node.input):
                if name:
                    self.readers.setdefault(name, []).append((i, j))
        self.graph_outputs = {out.name for out in graph.output}
        self.constants = {
            node.output[0]: i for i, node in enumerate(self.nodes)
            if node.op_type == "Constant" and node.domain in STANDARD and node.output
            and any(a.name == "value" and a.type == 4 for a in node.attribute)
        }
        self._resolved: dict[str, tuple | None] = {}

    # ---- stored tensors
    def stored(self, source: str):
        """The TensorProto a source name stores (initializer, or a Constant node's ``value``)."""
        if source in self.constants:
            node = self.nodes[self.constants[source]]
            return next(a.t for a in node.attribute if a.name == "value")
        return self.initializers[source]

    def is_stored(self, name: str) -> bool:
        return (name in self.initializers and name not in self.producer) or name in self.constants

    def const_value(self, name: str):
        """numpy value of a stored tensor (or a chain of one), None if computed."""
        resolved = self.resolve(name)
        if resolved is None:
            return None
        source, chain = resolved
        return effective_value(self.stored(source), chain)

    def resolve(self, name: str) -> tuple[str, tuple] | None:
        """(stored tensor, chain of Steps) that tensor ``name`` is, or None if it is computed."""
        if name in self._resolved:
            return self._resolved[name]
        self._resolved[name] = None  # guards against cycles in corrupt files
        result = None
        if self.is_stored(name):
            result = (name, ())
        elif name in self.producer:
            node = self.nodes[self.producer[name]]
            if node.op_type in CHAIN_OPS and node.domain in STANDARD and node.input and len(node.output) == 1:
                inner = self.resolve(node.input[0])
                if inner is not None:
                    step = self._step(node, inner)
                    if step is not None:
                        result = (inner[0], inner[1] + (step,))
        self._resolved[name] = result
        return result

    def _step(self, node, inner) -> Step | None:
        from onnx import numpy_helper

        before = effective_value(self.stored(inner[0]), inner[1], numpy_helper)
        shape, elem = tuple(before.shape), _elem_of(before, self.stored(inner[0]), inner[1])
        if node.op_type == "Identity":
            return Step("Identity", stored_shape=shape, stored_type=elem)
        if node.op_type == "Transpose":
            perm = _attr(node, "perm", None)
            perm = tuple(perm) if perm else tuple(reversed(range(len(shape))))
            return Step("Transpose", perm=perm, stored_shape=shape, stored_type=elem)
        if node.op_type == "Cast":
            return Step("Cast", to=int(_attr(node, "to", 0)), stored_shape=shape, stored_type=elem)
        # Reshape: the shape input must be stored too (opset 5+), or the ``shape`` attribute (opset 1)
        if len(node.input) > 1 and node.input[1]:
            target = self.const_value(node.input[1])
            if target is None:
                return None
            target = [int(d) for d in np.asarray(target).reshape(-1)]
        else:
            target = _attr(node, "shape", None)
            if target is None:
                return None
        if not _attr(node, "allowzero", 0):
            target = [shape[k] if d == 0 and k < len(shape) else d for k, d in enumerate(target)]
        try:
            out_shape = np.empty(shape, dtype=np.uint8).reshape(target).shape
        except ValueError:
            return None
        return Step("Reshape", shape=tuple(out_shape), stored_shape=shape, stored_type=elem)

    def closure(self, source: str) -> set[str]:
        """Every tensor name that is ``source`` through chain nodes (``source`` included)."""
        return {name for name in list(self.producer) + [source] if (self.resolve(name) or (None,))[0] == source}

    def users(self, source: str) -> tuple[set[tuple[int, int]], bool]:
        """Every (node, input) reading ``source`` directly or through chain nodes (the chain
        nodes themselves excluded), and whether a graph output exposes it."""
        names = self.closure(source)
        found: set[tuple[int, int]] = set()
        for name in names:
            for i, j in self.readers.get(name, ()):
                node = self.nodes[i]
                if j == 0 and node.op_type in CHAIN_OPS and node.output and node.output[0] in names:
                    continue
                found.add((i, j))
        return found, bool(names & self.graph_outputs)


def _elem_of(value: np.ndarray, stored, chain: tuple) -> int:
    for step in reversed(chain):
        if step.op == "Cast":
            return step.to
    if isinstance(stored, np.ndarray):
        import onnx

        return onnx.helper.np_dtype_to_tensor_dtype(stored.dtype)
    return stored.data_type


def effective_value(stored, chain: tuple, numpy_helper=None) -> np.ndarray:
    """The value a layer sees: the stored tensor (a TensorProto, or already an array) with the chain applied."""
    if numpy_helper is None:
        from onnx import numpy_helper
    import onnx

    value = stored if isinstance(stored, np.ndarray) else numpy_helper.to_array(stored)
    for step in chain:
        if step.op == "Transpose":
            value = np.transpose(value, step.perm)
        elif step.op == "Cast":
            value = value.astype(onnx.helper.tensor_dtype_to_np_dtype(step.to))
        elif step.op == "Reshape":
            value = value.reshape(step.shape)
    return np.ascontiguousarray(value)


def stored_layout(value: np.ndarray, chain: tuple, stored) -> np.ndarray:
    """Undo ``chain`` on a value the layer sees: the array to store, in the stored type."""
    import onnx

    for step in reversed(chain):
        if step.op == "Transpose":
            value = np.transpose(value, np.argsort(step.perm))
        elif step.op == "Reshape":
            value = value.reshape(step.stored_shape)
        elif step.op == "Cast":
            value = value.astype(onnx.helper.tensor_dtype_to_np_dtype(step.stored_type), copy=False)
    value = value.astype(onnx.helper.tensor_dtype_to_np_dtype(stored.data_type), copy=False).reshape(tuple(stored.dims))
    return np.ascontiguousarray(value)  # no copy when the value already is the stored layout


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            if a.type == 1:
                return a.f
            if a.type == 2:
                return a.i
            if a.type == 3:
                return a.s.decode()
            if a.type == 7:
                return list(a.ints)
            return default
    return default


def _slot(g: _Graph, kind: str, node_index: int, input_index: int) -> Slot | None:
    node = g.nodes[node_index]
    if input_index >= len(node.input) or not node.input[input_index]:
        return None
    tensor = node.input[input_index]
    resolved = g.resolve(tensor)
    if resolved is None:
        return None
    source, chain = resolved
    stored = g.stored(source)
    if chain:
        last = chain[-1]
        dims = last.shape if last.op == "Reshape" else _chain_dims(last, stored)
        elem = _elem_of(None, stored, chain)
    else:
        dims, elem = tuple(stored.dims), stored.data_type
    return Slot(kind, node_index, input_index, tensor, source, g.constants.get(source), chain, tuple(dims), elem)


def _chain_dims(last: Step, stored) -> tuple:
    if last.op == "Transpose":
        return tuple(last.stored_shape[p] for p in last.perm)
    return tuple(last.stored_shape)


def _float_weight(slot: Slot | None, min_rank: int, max_rank: int | None = None) -> bool:
    if slot is None:
        return False
    rank = len(slot.dims)
    return slot.elem_type in FLOAT_TYPES and rank >= min_rank and (max_rank is None or rank <= max_rank)


def _bias_fits(slot: Slot | None, weight: Slot, n_out: int, shapes: tuple) -> bool:
    return slot is not None and slot.elem_type == weight.elem_type and tuple(slot.dims) in shapes and n_out > 0


def _conv_target(g: _Graph, i: int) -> OnnxTarget | None:
    node = g.nodes[i]
    weight = _slot(g, "weight", i, 1)
    if not _float_weight(weight, 3):
        return None
    dims = weight.dims
    group = _attr(node, "group", 1)
    n_out = dims[0] if node.op_type == "Conv" else dims[1] * group
    bias = _slot(g, "bias", i, 2)
    if len(node.input) > 2 and node.input[2] and not _bias_fits(bias, weight, n_out, ((n_out,),)):
        return None  # a computed or odd bias: onnx2torch can't convert it either
    return OnnxTarget("", node.op_type, i, node.output[0], weight, bias, {"group": group})


def _gemm_target(g: _Graph, i: int) -> OnnxTarget | None:
    node = g.nodes[i]
    weight = _slot(g, "weight", i, 1)
    if not _float_weight(weight, 2, 2):
        return None
    attrs = {
        "alpha": float(_attr(node, "alpha", 1.0)),
        "beta": float(_attr(node, "beta", 1.0)),
        "transA": int(_attr(node, "transA", 0)),
        "transB": int(_attr(node, "transB", 0)),
    }
    dims = weight.dims
    n_out = dims[0] if attrs["transB"] else dims[1]
    target = OnnxTarget("", "Gemm", i, node.output[0], weight, attrs=attrs)
    if len(node.input) > 2 and node.input[2] and attrs["beta"] != 0.0:
        bias = _slot(g, "bias", i, 2)
        if _bias_fits(bias, weight, n_out, ((n_out,), (1, n_out))):
            target.bias = bias
        else:  # the stored tensor it holds (through chain nodes), or the computed tensor's name
            resolved = g.resolve(node.input[2])
            target.extra_c = node.input[2] if resolved is None or resolved[1] or resolved[0] in g.constants else resolved[0]
    return target


def _matmul_target(g: _Graph, i: int) -> OnnxTarget | None:
    node = g.nodes[i]
    weight = _slot(g, "weight", i, 1)
    if not _float_weight(weight, 2, 2) or len(node.input) < 2 or g.resolve(node.input[0]) is not None:
        return None
    target = OnnxTarget("", "MatMul", i, node.output[0], weight)
    out = node.output[0]
    readers = g.readers.get(out, [])
    if len(readers) == 1 and out not in g.graph_outputs:
        j, k = readers[0]
        add = g.nodes[j]
        if add.op_type == "Add" and add.domain in STANDARD and len(add.input) == 2 and add.input[0] != add.input[1]:
            bias = _slot(g, "bias", j, 1 - k)
            n_out = weight.dims[1]
            if _bias_fits(bias, weight, n_out, ((n_out,),)):
                target.bias, target.fused_add, target.output = bias, j, add.output[0]
    return target


_FINDERS = {"Conv": _conv_target, "ConvTranspose": _conv_target, "Gemm": _gemm_target, "MatMul": _matmul_target}


def _labels(g: _Graph, targets: list[OnnxTarget]) -> None:
    seen: dict[str, int] = {}
    for t in targets:
        node = g.nodes[t.node_index]
        base = node.name or node.output[0]
        count = seen.get(base, 0)
        seen[base] = count + 1
        t.label = base if count == 0 else f"{base}#{count}"


def node_label(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def find_targets(model, exclude: dict[int, str] | None = None) -> TargetPlan:
    """Target layers of ``model`` (a ModelProto) in execution order.

    ``exclude``: node index -> why that node is not initialized (it runs inside onnxruntime);
    such layers are listed in ``skipped`` instead."""
    exclude = exclude or {}
    g = _Graph(model.graph)
    targets, skipped = [], []
    for i, node in enumerate(g.nodes):
        if node.domain in STANDARD and node.op_type in _FINDERS:
            target = _FINDERS[node.op_type](g, i)
            if target is None:
                continue
            if i in exclude:
                skipped.append((node_label(node), exclude[i]))
                continue
            targets.append(target)
    _labels(g, targets)
    targets, tied, tied_notes = _without_tied(g, targets)
    notes = tied_notes + _share_notes(targets)
    return TargetPlan(targets, notes, skipped, tied)


SHAPE_ONLY_OPS = ("Shape", "Size")  # read a tensor's shape, not its values


def _without_tied(g: _Graph, targets: list[OnnxTarget]) -> tuple[list[OnnxTarget], list[OnnxTarget], list[str]]:
    """The API's rule for tied weights (:func:`lsuv_convert.lsuv.targets.split_tied`) on a file: a target
    whose stored weight a node that is not a target layer also reads (GPT-2's LM head reading the
    embedding table a Gather reads, through a Transpose) is left as it is. Returns (targets kept,
    targets left out, a note for each)."""
    from ...lsuv.targets import split_tied

    by_slot = {(t.weight.node_index, t.weight.input_index): t.label for t in targets}
    holders: dict[str, list[str]] = {}
    for t in targets:
        users, _ = g.users(t.weight.source)
        holders[t.label] = [by_slot.get((i, j)) or node_label(g.nodes[i]) for i, j in sorted(users)
                            if g.nodes[i].op_type not in SHAPE_ONLY_OPS]
    kept, notes = split_tied(holders)
    keep = set(kept)
    return [t for t in targets if t.label in keep], [t for t in targets if t.label not in keep], notes


def _share_notes(targets: list[OnnxTarget]) -> list[str]:
    """Mark targets whose weight input reads the tensor an earlier target reads: one layer in torch."""
    first: dict[str, OnnxTarget] = {}
    for t in targets:
        if t.weight.tensor in first:
            t.shares_weight_with = first[t.weight.tensor].label
        else:
            first[t.weight.tensor] = t
    notes = []
    for t in targets:
        if t.shares_weight_with is None:
            others = [u.label for u in targets if u.shares_weight_with == t.label]
            if others:
                notes.append(
                    f"weight {t.weight.source!r} is shared by {', '.join([t.label] + others)}: "
                    f"kept shared, scaled once at its first use ({t.label})"
                )
    return notes


def graph_view(model, initializers: dict | None = None) -> _Graph:
    """Lookups over ``model``'s graph; ``initializers`` (name -> TensorProto or numpy array) stand
    for the graph's own (the writer's output keeps them outside the ModelProto)."""
    return _Graph(model.graph, initializers)


def unique_name(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}.{k}"
    return candidate


# ---------------------------------------------------------------- what a file holds besides targets

QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "MatMulNBits", "QOrderedMatMul", "DequantizeLinearFP8",
}


def refuse_quantized(model, path) -> None:
    """A quantized graph's weights are integers tied to scales: LSUV can't rescale them meaningfully."""
    from ...errors import ModelFormatError

    g = _Graph(model.graph)
    for node in g.nodes:
        integer_weight = (
            node.op_type in TARGET_OPS and len(node.input) > 1 and g.is_stored(node.input[1])
            and g.stored(node.input[1]).data_type not in FLOAT_TYPES
        )
        if node.op_type in QUANTIZED_OPS or integer_weight:
            raise ModelFormatError(
                f"quantized graph (node {node_label(node)!r}, {node.op_type}): quantized weights can't be initialized; "
                "initialize the float model, then quantize it", path=path)


def nothing_to_initialize(model) -> str:
    """Why no target was found, as precisely as the file allows."""
    g = _Graph(model.graph)
    for node in g.nodes:
        if node.op_type in TARGET_OPS and len(node.input) > 1 and node.input[1] in g.producer:
            producer = g.nodes[g.producer[node.input[1]]]
            if g.resolve(node.input[1]) is None and producer.op_type not in ("Transpose", "Cast", "Reshape", "Identity"):
                if producer.op_type == "ConstantOfShape":
                    return (f"no stored weights: the weight of {node.op_type} {node_label(node)!r} is computed by "
                            f"ConstantOfShape (a file without trained or stored values); nothing to initialize")
    for node in g.nodes:
        inner = subgraph_layers(node, set(g.initializers) | set(g.constants))
        if inner:
            return (f"every Conv, ConvTranspose, Gemm or MatMul layer with a stored weight is inside a subgraph (first: "
                    f"{inner[0]!r} in {node.op_type} {node_label(node)!r}), and subgraphs run in onnxruntime: nothing to "
                    "initialize")
    return "no Conv, ConvTranspose, Gemm or MatMul layer with a stored weight (initializer or Constant): nothing to initialize"


def subgraph_layers(node, outer: set[str] | None = None) -> list[str]:
    """Conv / ConvTranspose / Gemm / MatMul nodes with a stored weight inside a node's subgraphs
    (recursively): layers torch never sees."""
    found = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == 5 else list(attr.graphs)  # AttributeProto.GRAPH
        for graph in graphs:
            stored = set(outer or ()) | {t.name for t in graph.initializer} | {
                n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
            for inner in graph.node:
                if inner.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(inner.input) > 1 and inner.input[1] in stored:
                    found.append(inner.name or inner.output[0])
                found.extend(subgraph_layers(inner, stored))
    return found


_INDEX_PASS = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose", "Clip")


def index_bounds(model) -> dict[str, int]:
    """{graph input: exclusive bound of valid values} for integer inputs that index a stored table
    (``Gather(table, ids)``, directly or through shape-only nodes): the smallest such table size."""
    g = _Graph(model.graph)
    bounds: dict[str, int] = {}
    initializers = set(g.initializers)
    for value in model.graph.input:
        if value.name in initializers or value.type.tensor_type.elem_type not in (2, 3, 4, 5, 6, 7, 12, 13):
            continue
        frontier, seen = [value.name], {value.name}
        while frontier:
            name = frontier.pop()
            for i, j in g.readers.get(name, ()):
                node = g.nodes[i]
                if node.op_type == "Gather" and j == 1:
                    table = g.resolve(node.input[0])
                    if table is not None:
                        shape = effective_value(g.stored(table[0]), table[1]).shape
                        axis = int(_attr(node, "axis", 0))
                        if shape:
                            size = shape[axis]
                            bounds[value.name] = min(bounds.get(value.name, size), size)
                elif node.op_type in _INDEX_PASS and j == 0:
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            frontier.append(out)
    return bounds
