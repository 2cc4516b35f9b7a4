"""Which ONNX nodes LSUV initializes, where their weights live, and where save() writes them.

Pure ONNX, no torch: ``load`` uses it to build the torch graph and the write-back plan,
``measure`` uses it to find the tensors to read back from a written file.

Target layers are Conv, ConvTranspose, Gemm and MatMul whose weight is an initializer, also
when reached through ``Identity`` nodes. A MatMul whose only consumer is an ``Add`` of a
per-output-channel initializer is one linear layer (the exporters split ``nn.Linear`` on 3-D
inputs that way): the Add's initializer is its bias and its output is the layer output.

Write-back plan (the node list stays as it was; only target layers' weight/bias inputs may be
repointed): torch's TorchScript-based exporter de-duplicates equal initializers (all the zero
biases of an untrained model, say) behind ``Identity`` nodes, and the dynamo exporter reuses one
initializer directly. A target writes its new values *in place* only when the initializer it
reads directly is read by nothing but target layers that will not keep it; otherwise it gets a
dedicated new initializer and its input is repointed to it, leaving every other reader (a
BatchNorm bias that was de-duplicated with a conv bias, the Identity node itself) unchanged.
A weight that several targets read *directly* (a module used twice, or weights the exporter
found equal) stays shared: one initializer, scaled once at its first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLOAT_TYPES = {1, 10, 11}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE
TARGET_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Slot:
    """One tensor of a target layer (its weight or bias) and where it is read from."""

    kind: str  # "weight" or "bias"
    node_index: int  # node that reads it: the target node, or the fused Add for a MatMul bias
    input_index: int
    tensor: str  # the name that node reads (may be an Identity output)
    initializer: str  # the initializer it resolves to
    via_identity: bool
    dest: str = ""  # initializer save() writes into
    new: bool = False  # dest is a new initializer; the node input is repointed to it


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
    extra_c: str | None = None  # Gemm C that is not a per-output bias (initializer or tensor name): kept as is
    shares_weight_with: str | None = None  # label of the first target reading the same weight

    def slots(self) -> list[Slot]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])


@dataclass
class TargetPlan:
    targets: list[OnnxTarget]
    notes: list[str]

    def new_slots(self) -> list[Slot]:
        return [s for t in self.targets for s in t.slots() if s.new]


class _Graph:
    """Lookups over a GraphProto that the analysis needs."""

    def __init__(self, graph):
        self.graph = graph
        self.nodes = list(graph.node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer = {out: i for i, node in enumerate(self.nodes) for out in node.output if out}
        self.readers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(self.nodes):
            for j, name in enumerate(node.input):
                if name:
                    self.readers.setdefault(name, []).append((i, j))
        self.graph_outputs = {out.name for out in graph.output}
        self.alias = self._identity_aliases()

    def _identity_aliases(self) -> dict[str, str]:
        """Identity output -> initializer it copies (through chains of Identity nodes)."""
        alias: dict[str, str] = {}
        for node in self.nodes:  # nodes are topologically sorted, so chains resolve in one pass
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input and node.output:
                src = node.input[0]
                if src in self.initializers and src not in self.producer:
                    alias[node.output[0]] = src
                elif src in alias:
                    alias[node.output[0]] = alias[src]
        return alias

    def resolve(self, name: str) -> tuple[str, bool] | None:
        """(initializer, via_identity) that tensor ``name`` holds, or None if it is computed."""
        if name in self.initializers and name not in self.producer:
            return name, False
        if name in self.alias:
            return self.alias[name], True
        return None

    def users(self, initializer: str) -> tuple[set[tuple[int, int]], bool]:
        """Every (node, input) reading ``initializer`` directly or through Identity nodes (the
        Identity nodes themselves excluded), and whether a graph output exposes it."""
        names = {initializer} | {a for a, src in self.alias.items() if src == initializer}
        found: set[tuple[int, int]] = set()
        for name in names:
            for i, j in self.readers.get(name, ()):
                node = self.nodes[i]
                if node.op_type == "Identity" and node.output and node.output[0] in names:
                    continue
                found.add((i, j))
        return found, bool(names & self.graph_outputs)

    def dims(self, name: str) -> list[int]:
        return list(self.initializers[name].dims)

    def dtype(self, name: str) -> int:
        return self.initializers[name].data_type


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
    return Slot(kind, node_index, input_index, tensor, resolved[0], resolved[1])


def _float_weight(g: _Graph, slot: Slot | None, min_rank: int, max_rank: int | None = None) -> bool:
    if slot is None:
        return False
    rank = len(g.dims(slot.initializer))
    return g.dtype(slot.initializer) in FLOAT_TYPES and rank >= min_rank and (max_rank is None or rank <= max_rank)


def _bias_fits(g: _Graph, slot: Slot | None, weight: Slot, n_out: int, shapes: tuple) -> bool:
    return (
        slot is not None
        and g.dtype(slot.initializer) == g.dtype(weight.initializer)
        and tuple(g.dims(slot.initializer)) in shapes
        and n_out > 0
    )


def _conv_target(g: _Graph, i: int) -> OnnxTarget | None:
    node = g.nodes[i]
    weight = _slot(g, "weight", i, 1)
    if not _float_weight(g, weight, 3):
        return None
    dims = g.dims(weight.initializer)
    group = _attr(node, "group", 1)
    n_out = dims[0] if node.op_type == "Conv" else dims[1] * group
    bias = _slot(g, "bias", i, 2)
    if len(node.input) > 2 and node.input[2] and not _bias_fits(g, bias, weight, n_out, ((n_out,),)):
        return None  # a computed or odd bias: onnx2torch can't convert it either
    return OnnxTarget("", node.op_type, i, node.output[0], weight, bias, {"group": group})


def _gemm_target(g: _Graph, i: int) -> OnnxTarget | None:
    node = g.nodes[i]
    weight = _slot(g, "weight", i, 1)
    if not _float_weight(g, weight, 2, 2):
        return None
    attrs = {
        "alpha": float(_attr(node, "alpha", 1.0)),
        "beta": float(_attr(node, "beta", 1.0)),
        "transA": int(_attr(node, "transA", 0)),
        "transB": int(_attr(node, "transB", 0)),
    }
    dims = g.dims(weight.initializer)
    n_out = dims[0] if attrs["transB"] else dims[1]
    target = OnnxTarget("", "Gemm", i, node.output[0], weight, attrs=attrs)
    if len(node.input) > 2 and node.input[2] and attrs["beta"] != 0.0:
        bias = _slot(g, "bias", i, 2)
        if _bias_fits(g, bias, weight, n_out, ((n_out,), (1, n_out))):
            target.bias = bias
        else:  # the initializer it holds (through Identity nodes), or the computed tensor's name
            resolved = g.resolve(node.input[2])
            target.extra_c = resolved[0] if resolved else node.input[2]
    return target


def _matmul_target(g: _Graph, i: int) -> OnnxTarget | None:
    node = g.nodes[i]
    weight = _slot(g, "weight", i, 1)
    if not _float_weight(g, weight, 2, 2) or len(node.input) < 2 or g.resolve(node.input[0]) is not None:
        return None
    target = OnnxTarget("", "MatMul", i, node.output[0], weight)
    out = node.output[0]
    readers = g.readers.get(out, [])
    if len(readers) == 1 and out not in g.graph_outputs:
        j, k = readers[0]
        add = g.nodes[j]
        if add.op_type == "Add" and add.domain in ("", "ai.onnx") and len(add.input) == 2 and add.input[0] != add.input[1]:
            bias = _slot(g, "bias", j, 1 - k)
            n_out = g.dims(weight.initializer)[1]
            if _bias_fits(g, bias, weight, n_out, ((n_out,),)):
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


def find_targets(model) -> TargetPlan:
    """Target layers of ``model`` (a ModelProto) in execution order, with their write-back plan."""
    g = _Graph(model.graph)
    targets = []
    for i, node in enumerate(g.nodes):
        if node.domain in ("", "ai.onnx") and node.op_type in _FINDERS:
            target = _FINDERS[node.op_type](g, i)
            if target is not None:
                targets.append(target)
    _labels(g, targets)
    notes = _plan_writes(g, targets)
    return TargetPlan(targets, notes)


def _plan_writes(g: _Graph, targets: list[OnnxTarget]) -> list[str]:
    """Fill every slot's ``dest``/``new``: write in place, or untie into a new initializer."""
    notes: list[str] = []
    units = _share_units(targets)
    target_inputs = {(s.node_index, s.input_index) for t in targets for s in t.slots()}
    claimed: set[str] = set()
    taken = set(g.initializers) | set(g.producer) | {i.name for i in g.graph.input}
    untied: list[str] = []
    for kind, members in units:
        slots = [getattr(t, kind) for t in members]
        initializer = slots[0].initializer
        users, exposed = g.users(initializer)
        direct = not any(s.via_identity for s in slots)
        if direct and initializer not in claimed and not exposed and users <= target_inputs:
            claimed.add(initializer)
            for s in slots:
                s.dest, s.new = initializer, False
            continue
        name = _unique(f"{members[0].label}.{kind}", taken)
        taken.add(name)
        for s in slots:
            s.dest, s.new = name, True
        untied.append(f"{members[0].label}.{kind}")
    for t in targets:
        if t.shares_weight_with is None:
            others = [u.label for u in targets if u.shares_weight_with == t.label]
            if others:
                notes.append(
                    f"weight {t.weight.initializer!r} is shared by {', '.join([t.label] + others)}: "
                    f"kept shared, scaled once at its first use ({t.label})"
                )
    if untied:
        shown = ", ".join(untied[:8]) + (f" and {len(untied) - 8} more" if len(untied) > 8 else "")
        notes.append(
            f"untied {len(untied)} weight/bias tensor(s) that other nodes also read (exporter de-duplication "
            f"behind Identity nodes or shared initializers): each target got its own initializer ({shown})"
        )
    return notes


def _share_units(targets: list[OnnxTarget]) -> list[tuple[str, list[OnnxTarget]]]:
    """Groups of targets that keep one tensor: a weight read directly by several targets, and
    their bias when they all read the same bias directly. Everything else is a unit of one."""
    by_weight: dict[str, list[OnnxTarget]] = {}
    units: list[tuple[str, list[OnnxTarget]]] = []
    for t in targets:
        w = t.weight
        if not w.via_identity and w.initializer in by_weight:
            group = by_weight[w.initializer]
            t.shares_weight_with = group[0].label
            group.append(t)
            continue
        group = [t]
        if not w.via_identity:
            by_weight[w.initializer] = group
        units.append(("weight", group))
    for group in [g for kind, g in units if kind == "weight"]:
        with_bias = [t for t in group if t.bias is not None]
        shared = (
            len(with_bias) == len(group) > 1
            and not any(t.bias.via_identity for t in group)
            and len({t.bias.initializer for t in group}) == 1
        )
        if shared:
            units.append(("bias", group))
        else:
            units.extend(("bias", [t]) for t in with_bias)
    order = {id(t): k for k, t in enumerate(targets)}
    units.sort(key=lambda u: (order[id(u[1][0])], u[0] != "weight"))
    return units


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}.{k}"
    return candidate
