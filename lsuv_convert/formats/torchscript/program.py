"""Read a ScriptModule's inlined ``forward`` graph into a Program both engine paths can run.

The graph is copied, inlined (submodule calls flattened), and specialised for inference:
every non-tensor attribute (``training``, flags, sizes) is read once and replaced by a
constant, then TorchScript's own constant propagation folds the branches that depended on
them (``if self.training: ...``) and dead code is removed. What is left is translated node
by node into :class:`Op` records: attribute reads resolved to attribute paths, constants,
target layers, control flow with its blocks, and ordinary ops with the callable that runs
exactly that op (see :mod:`.ops`). Nothing here runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..shared.layer_calls import layer_name
from .layers import ATTENTION, LAYER_KINDS, LayerCall, match_attention, match_layer
from .ops import Resolved, UnsupportedNode, _dispatcher_overload, resolve


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass
class ModuleRef:
    """A submodule value: the attribute path from the root and the C++ module object."""

    path: str
    obj: Any


@dataclass
class Op:
    kind: str  # the TorchScript node kind
    role: str  # "call" | "layer" | "read" | "if" | "loop" | "get_attr" | "set_attr"
    args: list  # graph value ids (int) or Const
    outputs: list[int]
    call: Resolved | None = None  # role "call"
    blocks: list["Block"] = field(default_factory=list)
    key: Any = None  # read: tensor key; layer: module path; get/set_attr: (owner path, name)
    frees: tuple[int, ...] = ()  # values dead after this op (for the interpreter)


@dataclass
class Block:
    inputs: list[int]
    ops: list[Op]
    outputs: list  # value ids or Const


@dataclass
class InputDef:
    name: str
    value_id: int


@dataclass
class Program:
    inputs: list[InputDef]
    body: Block
    tensors: dict[str, torch.Tensor]  # read key -> tensor: attributes (not layer params) and constants
    params: dict[str, torch.Tensor]  # parameter path -> the ScriptModule's tensor (layer weights / biases)
    layers: dict[str, list[LayerCall]]  # module path -> its weight's distinct calls, in first-appearance order
    layer_names: dict[str, str]  # module path -> layer name (attribute path)
    in_control_flow: list[str] = field(default_factory=list)  # layer names inside prim::If / prim::Loop
    set_attrs: bool = False  # forward assigns attributes: only the interpreter can run it
    attr_owners: dict[tuple[str, str], Any] = field(default_factory=dict)  # for get_attr: owner objects
    untouched_params: list[str] = field(default_factory=list)  # matrix-like params no layer uses
    written: set[str] = field(default_factory=set)  # attribute paths the graph writes to
    training_ops: list[str] = field(default_factory=list)  # ops that run in training mode (traced so)
    layer_parts: dict[str, int] = field(default_factory=dict)  # module path -> q/k/v slices its output is split into
    param_slices: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # "w[q]" -> (w, first row, end row)
    layer_outputs: dict[int, str] = field(default_factory=dict)  # first output value id of a layer node -> module path

    @property
    def has_control_flow(self) -> bool:
        """Whether a ``prim::If`` / ``prim::Loop`` is left after folding: what runs then depends on the data."""
        return any(op.role in ("if", "loop") for op in self.body.ops)

    @property
    def fx_blockers(self) -> list[str]:
        """Why this program can't be an fx graph whose target layers are call_module nodes."""
        reasons = []
        if self.in_control_flow:
            reasons.append(f"layer(s) {', '.join(self.in_control_flow)} run inside data-dependent control flow (prim::If / prim::Loop)")
        if self.set_attrs:
            reasons.append("forward assigns module attributes (prim::SetAttr)")
        return reasons


class ProgramError(Exception):
    """The graph uses something neither engine path can run."""


def read_program(script_module, graph=None) -> Program:
    """The Program of ``script_module``'s forward; ``graph``: its :func:`specialised_graph`, when
    the caller keeps it (verify's probes go into that graph, at the value ids the Program names)."""
    graph = graph if graph is not None else specialised_graph(script_module)
    nodes = _all_nodes(graph.block())  # what is left after folding
    has_set_attr = any(kind == "prim::SetAttr" for kind, _ in nodes)
    return _Reader(script_module, graph, nodes, has_set_attr).read()


def specialised_graph(script_module):
    """A copy of the inlined forward graph with non-tensor attributes folded to constants."""
    graph = script_module.inlined_graph  # a copy: safe to rewrite
    nodes = _all_nodes(graph.block())
    _specialise_attributes(graph, script_module._c, nodes, assigned=_assigned_attributes(graph, nodes))
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    return graph


def _all_nodes(block) -> list[tuple[str, object]]:
    """(kind, node) of every node, nested blocks included, in program order (a node before its blocks)."""
    found = []
    stack = [iter(block.nodes())]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            continue
        found.append((node.kind(), node))
        blocks = list(node.blocks())
        if blocks:
            stack.extend(iter(b.nodes()) for b in reversed(blocks))
    return found


def _assigned_attributes(graph, nodes) -> set[tuple[str, str]]:
    """(owner path, name) of every attribute forward assigns with ``prim::SetAttr``."""
    keys = set()
    owners: dict[int, str] = {next(graph.inputs()).unique(): ""}
    for kind, node in nodes:
        if kind == "prim::GetAttr":
            source = node.input().unique()
            if source in owners:
                owners[node.output().unique()] = _join(owners[source], node.s("name"))
        elif kind == "prim::SetAttr":
            source = node.inputsAt(0).unique()
            if source in owners:
                keys.add((owners[source], node.s("name")))
    return keys


_CONSTANT_TYPES = (bool, int, float, str, type(None), torch.device)  # immutable: safe to fold


def _constant_like(value) -> bool:
    if isinstance(value, _CONSTANT_TYPES):
        return True
    if isinstance(value, tuple):  # not lists: forward may append to a list attribute
        return all(isinstance(v, (bool, int, float)) for v in value) or all(isinstance(v, str) for v in value)
    return False


def _specialise_attributes(graph, root, nodes, assigned: set[tuple[str, str]]) -> None:
    """Replace reads of non-tensor attributes (``training``, flags) by constants, in place.

    Attributes forward assigns keep being read at run time.
    """
    owners = {next(graph.inputs()).unique(): ("", root)}
    for kind, node in nodes:
        if kind != "prim::GetAttr":
            continue
        owner = owners.get(node.input().unique())
        if owner is None:
            continue
        path, obj = owner
        name = node.s("name")
        value = obj.getattr(name)
        if isinstance(value, torch._C.ScriptModule):
            owners[node.output().unique()] = (_join(path, name), value)
        elif (path, name) in assigned:
            continue
        elif not isinstance(value, torch.Tensor) and _constant_like(value):
            try:
                with graph.insert_point_guard(node):
                    constant = graph.insertConstant(value)
            except (RuntimeError, TypeError):
                continue
            node.output().replaceAllUsesWith(constant)


class _Reader:
    def __init__(self, script_module, graph, nodes, has_set_attr: bool):
        self.sm = script_module
        self.graph = graph
        self.nodes = nodes  # (kind, node) of the whole graph, in program order
        self.has_set_attr = has_set_attr
        self.static: dict[int, Const | ModuleRef] = {}
        self.producer: dict[int, Op] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.params: dict[str, torch.Tensor] = {}
        self.layers: dict[str, list[LayerCall]] = {}
        self.layer_names: dict[str, str] = {}
        self.module_of_weight: dict[str, str] = {}
        self.layer_ops: list[tuple[Op, LayerCall]] = []
        self.in_control_flow: list[str] = []
        self.attr_owners: dict[tuple[str, str], Any] = {}
        self.param_paths = {name for name, _ in script_module.named_parameters()}
        self.set_attr_keys: set[tuple[str, str]] = set()
        self.written: set[int] = set()  # GetAttr outputs the graph writes to (through any alias)
        self.written_paths: set[str] = set()
        self.training_ops: list[str] = []
        self.layer_parts: dict[str, int] = {}
        self.param_slices: dict[str, tuple[str, int, int]] = {}
        self.call_of: dict[int, LayerCall] = {}  # id(layer Op) -> its call

    def read(self) -> Program:
        graph = self.graph
        values = list(graph.inputs())
        root = ModuleRef("", self.sm._c)
        self.static[values[0].unique()] = root
        if self.has_set_attr:
            self.set_attr_keys = _assigned_attributes(graph, self.nodes)
        self._find_written(graph)
        inputs = self._inputs(values[1:])
        body = self._block(graph.block(), depth=0, block_inputs=[])
        self._settle_layers()
        _drop_unused_reads(body, _all_uses(body))
        _annotate_frees(body)
        used = {calls[0].weight_path for calls in self.layers.values()}
        used |= {path for calls in self.layers.values() for path in calls[0].extra_params.values()}
        untouched = [
            name for name, p in self.sm.named_parameters() if name not in used and p.dim() >= 2
        ]
        return Program(
            inputs=inputs,
            body=body,
            tensors=self.tensors,
            params=self.params,
            layers=self.layers,
            layer_names=self.layer_names,
            in_control_flow=self.in_control_flow,
            set_attrs=self.has_set_attr,
            attr_owners=self.attr_owners,
            untouched_params=untouched,
            written=self.written_paths,
            training_ops=self.training_ops,
            layer_parts=self.layer_parts,
            param_slices=self.param_slices,
            layer_outputs={op.outputs[0]: op.key for op, _ in self.layer_ops},
        )

    # -- inputs -----------------------------------------------------------------------
    def _inputs(self, values) -> list[InputDef]:
        schema_args = list(self.sm.forward.schema.arguments)[1:]
        defs = []
        for value, arg in zip(values, schema_args):
            if arg.has_default_value():
                self.static[value.unique()] = Const(arg.default_value)
                continue
            kind = arg.type.kind()
            if kind == "OptionalType":
                kind = arg.type.getElementType().kind()
            if kind != "TensorType":
                raise ProgramError(
                    f"forward takes a required argument {arg.name!r} of type {arg.type}; "
                    "only tensor inputs can be fed from a data batch"
                )
            defs.append(InputDef(arg.name, value.unique()))
        return defs

    def _find_written(self, graph) -> None:
        alias_db = graph.alias_db()
        for kind, node in self.nodes:
            if kind != "prim::GetAttr":
                continue
            out = node.output()
            if out.type().kind() == "TensorType" and alias_db.has_writers(out):
                self.written.add(out.unique())

    # -- blocks -----------------------------------------------------------------------
    def _block(self, block, depth: int, block_inputs: list[int]) -> Block:
        ops: list[Op] = []
        for node in block.nodes():
            op = self._node(node, depth)
            if op is not None:
                ops.append(op)
                for out in op.outputs:
                    self.producer[out] = op
        outputs = [self._arg(v) for v in block.outputs()]
        return Block(block_inputs, ops, outputs)

    def _arg(self, value):
        s = self.static.get(value.unique())
        if s is None:
            return value.unique()
        if isinstance(s, ModuleRef):
            return Const(s.obj)
        return s

    def _node(self, node, depth: int) -> Op | None:
        kind = node.kind()
        outputs = [o.unique() for o in node.outputs()]
        if kind == "prim::Constant":
            return self._constant(node, outputs)
        if kind == "prim::GetAttr":
            return self._get_attr(node, outputs)
        args = [self._arg(v) for v in node.inputs()]
        if kind in _TRAINING_ARG:
            self._check_training_mode(kind, node, args)
        if kind == "prim::SetAttr":
            owner = self.static.get(node.inputsAt(0).unique())
            if not isinstance(owner, ModuleRef):
                raise ProgramError(f"prim::SetAttr on a value that is not a known submodule{_where(node)}")
            self.attr_owners[(owner.path, node.s("name"))] = owner.obj
            return Op(kind, "set_attr", args[1:], outputs, key=(owner.path, node.s("name")))
        if kind == "prim::If":
            blocks = [self._block(b, depth + 1, []) for b in node.blocks()]
            return Op(kind, "if", args, outputs, blocks=blocks)
        if kind == "prim::Loop":
            body = node.blocks()
            (sub,) = list(body)
            block_inputs = [v.unique() for v in sub.inputs()]
            return Op(kind, "loop", args, outputs, blocks=[self._block(sub, depth + 1, block_inputs)])
        if any(True for _ in node.blocks()):
            raise ProgramError(f"unsupported TorchScript construct {kind} (a node with blocks){_where(node)}")
        if kind in LAYER_KINDS or kind == ATTENTION:
            op = self._layer(node, args, outputs, depth)
            if op is not None:
                return op
        try:
            resolved = resolve(node)
        except UnsupportedNode as exc:
            raise ProgramError(f"{exc}{_where(node)}") from exc
        if kind in _SPLITS:
            self._note_parts(kind, args)
        return Op(kind, "call", args, outputs, call=resolved)

    def _note_parts(self, kind: str, args: list) -> None:
        """A linear layer whose output is split into equal slices (q, k, v): each slice is a map."""
        producer = self.producer.get(args[0]) if args and not isinstance(args[0], Const) else None
        for _ in range(3):  # Conv1D's addmm output is reshaped back to (..., features) before the split
            if producer is None or producer.kind not in ("aten::view", "aten::reshape", "aten::contiguous"):
                break
            first = producer.args[0] if producer.args else None
            producer = self.producer.get(first) if first is not None and not isinstance(first, Const) else None
        call = self.call_of.get(id(producer)) if producer is not None else None
        if call is None or call.family != "linear":
            return
        weight = self.params.get(call.weight_path)
        if weight is None or weight.dim() != 2:
            return
        features = weight.shape[call.out_axis]
        values = [a.value if isinstance(a, Const) else None for a in args[1:]]
        parts = None
        if kind == "aten::split" and isinstance(values[0], int) and 0 < values[0] < features and features % values[0] == 0:
            parts = features // values[0]
        elif kind in ("aten::chunk", "aten::unsafe_chunk") and isinstance(values[0], int) and features % values[0] == 0:
            parts = values[0]
        elif kind == "aten::unflatten" and values[0] == -1 and len(args) > 2:
            sizes = args[2]
            if not isinstance(sizes, Const):  # (2, E) with E a traced size: the leading count is what matters
                built = self.producer.get(sizes)
                sizes = built.args[0] if built is not None and built.kind == "prim::ListConstruct" and len(built.args) == 2 else None
            else:
                sizes = Const(sizes.value[0]) if len(sizes.value) == 2 else None
            if isinstance(sizes, Const) and isinstance(sizes.value, int) and sizes.value > 0 and features % sizes.value == 0:
                parts = sizes.value
        elif kind in ("aten::reshape", "aten::view") and len(args) > 1:
            # qkv(x).reshape(B, N, 3, heads, head_dim) (timm, many ViTs): the trailing (3, H, D) split q, k, v
            built = self.producer.get(args[1]) if not isinstance(args[1], Const) else None
            dims = list(built.args) if built is not None and built.kind == "prim::ListConstruct" else (
                [Const(d) for d in args[1].value] if isinstance(args[1], Const) else [])
            tail = [d.value if isinstance(d, Const) else None for d in dims[-3:]]
            if len(dims) >= 4 and all(isinstance(d, int) and d > 0 for d in tail) and tail[0] in (2, 3) and (
                    tail[0] * tail[1] * tail[2] == features):
                parts = tail[0]
        if parts is not None and 1 < parts <= 4:
            self.layer_parts[producer.key] = parts

    def _constant(self, node, outputs) -> Op | None:
        out = node.output()
        if out.type().kind() == "TensorType":
            key = f"constant:{out.unique()}"
            self.tensors[key] = node.t("value")
            return Op("prim::Constant", "read", [], outputs, key=key)
        try:
            value = out.toIValue()
        except RuntimeError:
            return Op("prim::Constant", "call", [], outputs, call=resolve(node))
        self.static[out.unique()] = Const(value)
        return None

    def _get_attr(self, node, outputs) -> Op | None:
        owner = self.static.get(node.input().unique())
        name = node.s("name")
        if not isinstance(owner, ModuleRef):
            raise ProgramError(f"attribute {name!r} read from a value that is not a known submodule{_where(node)}")
        path = _join(owner.path, name)
        value = owner.obj.getattr(name)
        out = node.output()
        if isinstance(value, torch._C.ScriptModule):
            self.static[out.unique()] = ModuleRef(path, value)
            return None
        if (owner.path, name) in self.set_attr_keys:
            self.attr_owners[(owner.path, name)] = owner.obj
            return Op("prim::GetAttr", "get_attr", [], outputs, key=(owner.path, name))
        if isinstance(value, torch.Tensor):
            if path in self.param_paths:
                self.params.setdefault(path, value)
            else:
                self.tensors.setdefault(path, value.detach())
            if out.unique() in self.written:
                self._copy_on_write(path)
            return Op("prim::GetAttr", "read", [], outputs, key=path)
        self.static[out.unique()] = Const(value)
        return None

    def _check_training_mode(self, kind: str, node, args) -> None:
        """Ops traced in training mode (the flag is baked into the graph) keep it: note them, and
        copy the running statistics batch-norm would update, so the saved ones stay as they are."""
        overload = _dispatcher_overload(node)
        if overload is None:
            return
        names = [a.name for a in overload._schema.arguments]
        flag_name, updated = _TRAINING_ARG[kind]
        flag = args[names.index(flag_name)] if flag_name in names else None
        if isinstance(flag, Const) and not flag.value:
            return
        if kind not in self.training_ops:
            self.training_ops.append(kind)
        for name in updated:
            if name not in names:
                continue
            arg = args[names.index(name)]
            op = self.producer.get(arg) if not isinstance(arg, Const) else None
            if op is not None and op.role == "read":
                self._copy_on_write(op.key)

    def _copy_on_write(self, path: str) -> None:
        """A tensor attribute the graph writes to is copied (non-layer parameters: by the
        module that runs the program), so running the model never changes what is saved."""
        if path in self.written_paths:
            return
        self.written_paths.add(path)
        if path in self.tensors:
            self.tensors[path] = self.tensors[path].clone()

    def _layer(self, node, args, outputs, depth) -> Op | None:
        if node.kind() == ATTENTION:
            call = match_attention(_dispatcher_overload(node), args, self._read_of, lambda a: isinstance(a, Const))
        else:
            call = match_layer(node.kind(), _dispatcher_overload(node), args, self._read_of, lambda a: isinstance(a, Const))
        if call is None:
            return None
        module_path = self.module_of_weight.get(call.weight_path)
        if module_path is None:
            name = layer_name(call.weight_path)
            if call.family == "attention":  # named after the MultiheadAttention that owns in_proj_weight
                name = call.weight_path.rpartition(".")[0] or name
            module_path = self._module_path(_identifier_path(name))
            self.module_of_weight[call.weight_path] = module_path
            self.layers[module_path] = []
            self.layer_names[module_path] = name
        name = self.layer_names[module_path]
        if depth > 0 and name not in self.in_control_flow:
            self.in_control_flow.append(name)
        op = Op(node.kind(), "layer", [], outputs, key=module_path)
        self.layer_ops.append((op, call))
        self.call_of[id(op)] = call
        if call.weight_path.endswith("in_proj_weight") and call.family == "linear":
            self.layer_parts.setdefault(module_path, 3)  # nn.MultiheadAttention's packed q, k, v
        return op

    def _settle_layers(self) -> None:
        """One module per weight: its bias is the first call's; distinct calls become variants."""
        first_bias = {}
        for op, call in self.layer_ops:
            first_bias.setdefault(op.key, call.bias_path)
            if call.bias_path != first_bias[op.key]:
                call.pass_bias_at_call_time()
        variant_of: dict[str, dict[tuple, int]] = {path: {} for path in self.layers}
        for op, call in self.layer_ops:
            variants = variant_of[op.key]
            if call.signature() not in variants:
                variants[call.signature()] = len(variants)
                self.layers[op.key].append(call)
        for op, call in self.layer_ops:
            variants = variant_of[op.key]
            prefix = [Const(variants[call.signature()])] if len(variants) > 1 else []
            op.args = prefix + list(call.dynamic)

    def _read_of(self, arg, through_t: bool = False) -> str | None:
        if isinstance(arg, Const):
            return None
        op = self.producer.get(arg)
        if op is None:
            return None
        if through_t:
            if op.role == "call" and op.kind == "aten::t" and len(op.args) == 1:
                return self._read_of(op.args[0])
            return None
        if op.role == "read" and op.key in self.param_paths:
            return op.key
        return self._slice_of(arg, op)

    def _slice_of(self, arg, op) -> str | None:
        """``w_q`` of ``w_q, w_kv = in_proj_weight.split([E, 2E])`` (or ``w[a:b]``): a key for
        those rows of the parameter, whose tensor is a view of it (updates land in the parameter)."""
        if op.kind == "prim::ListUnpack" and op.args and not isinstance(op.args[0], Const):
            source = self.producer.get(op.args[0])
            if source is None or source.kind not in _ROW_SPLITS or len(source.args) < 3:
                return None
            base = self._read_of(source.args[0])
            size, dim = self._constant_arg(source.args[1]), source.args[2]
            if base is None or base not in self.params or not isinstance(dim, Const) or dim.value != 0:
                return None
            rows = self.params[base].shape[0]
            if size is None and base.endswith(("in_proj_weight", "in_proj_bias")) and rows % 3 == 0 and len(op.outputs) in (2, 3):
                # nn.MultiheadAttention's w.split([E, 2E]) (q | kv) or w.chunk(3), with E a traced size
                third = rows // 3
                size = Const([third, 2 * third] if len(op.outputs) == 2 else [third] * 3)
            if size is None:
                return None
            if source.kind in ("aten::chunk", "aten::unsafe_chunk"):
                step = -(-rows // size.value)
                sizes = [min(step, rows - i) for i in range(0, rows, step)]
            elif isinstance(size.value, int):
                sizes = [min(size.value, rows - i) for i in range(0, rows, size.value)]
            else:
                sizes = list(size.value)
            index = op.outputs.index(arg)
            start = sum(sizes[:index])
            return self._slice_param(base, start, start + sizes[index])
        if op.kind == "aten::slice" and len(op.args) == 5 and all(isinstance(a, Const) for a in op.args[1:]):
            base = self._read_of(op.args[0])
            dim, start, end, step = (a.value for a in op.args[1:])
            if base is None or base not in self.params or dim != 0 or step != 1:
                return None
            rows = self.params[base].shape[0]
            start, end = max(start or 0, 0), min(rows if end is None else end, rows)
            return self._slice_param(base, start, end) if start < end else None
        return None

    def _constant_arg(self, arg) -> Const | None:
        """A constant argument, or a list built from constants (``prim::ListConstruct``)."""
        if isinstance(arg, Const):
            return arg
        op = self.producer.get(arg)
        if op is not None and op.kind == "prim::ListConstruct" and all(isinstance(a, Const) for a in op.args):
            return Const([a.value for a in op.args])
        return None

    def _slice_param(self, base: str, start: int, stop: int) -> str:
        rows = self.params[base].shape[0]
        label = f"{start}:{stop}"
        if base.endswith(("in_proj_weight", "in_proj_bias")) and rows % 3 == 0 and start % (rows // 3) == 0 and stop % (rows // 3) == 0:
            label = "qkv"[start // (rows // 3): stop // (rows // 3)]  # nn.MultiheadAttention's packed q, k, v
        key = f"{base}[{label}]"
        if key not in self.params:
            self.params[key] = self.params[base].narrow(0, start, stop - start)
            self.param_slices[key] = (base, start, stop)
        return key

    def _module_path(self, name: str) -> str:
        path = name if not name.startswith("_ts_") else "layer_" + name
        taken = set(self.layers)
        if path not in taken:  # two weights named alike (``w`` and ``w.weight``)
            return path
        n = 2
        while f"{path}_{n}" in taken:
            n += 1
        return f"{path}_{n}"


_ROW_SPLITS = {"aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unsafe_chunk"}


def _identifier_path(name: str) -> str:
    """``a.in_proj_weight[q]`` -> ``a.in_proj_weight_q``: a module path fx can call."""
    return name.replace("[", "_").replace(":", "_").replace("]", "")


_SPLITS = {"aten::split", "aten::chunk", "aten::unsafe_chunk", "aten::unflatten", "aten::reshape", "aten::view"}

# op kind -> (its training flag argument, the buffers it updates in place when training)
_TRAINING_ARG = {
    "aten::batch_norm": ("training", ("running_mean", "running_var")),
    "aten::instance_norm": ("use_input_stats", ("running_mean", "running_var")),
    "aten::dropout": ("train", ()),
    "aten::dropout_": ("train", ()),
    "aten::feature_dropout": ("train", ()),
    "aten::feature_dropout_": ("train", ()),
    "aten::alpha_dropout": ("train", ()),
    "aten::feature_alpha_dropout": ("train", ()),
}


def _join(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def _where(node) -> str:
    try:
        text = node.sourceRange().strip().splitlines()
    except (RuntimeError, AttributeError):
        return ""
    return f" (at {text[0].strip()})" if text else ""


def uses(op: Op) -> set[int]:
    """Value ids ``op`` reads, including inside its blocks (block outputs too)."""
    found = {a for a in op.args if isinstance(a, int)}
    for block in op.blocks:
        for inner in block.ops:
            found |= uses(inner)
        found |= {a for a in block.outputs if isinstance(a, int)}
    return found


def defined_inside(op: Op) -> set[int]:
    found: set[int] = set()
    for block in op.blocks:
        found |= set(block.inputs)
        for inner in block.ops:
            found |= set(inner.outputs) | defined_inside(inner)
    return found


def free_values(op: Op) -> list[int]:
    """Values from outside an If / Loop that its blocks read, in a stable order."""
    return sorted(uses(op) - defined_inside(op))


def _all_uses(block: Block) -> set[int]:
    found = {a for a in block.outputs if isinstance(a, int)}
    for op in block.ops:
        found |= uses(op)
    return found


def _drop_unused_reads(block: Block, used: set[int]) -> None:
    """Attribute reads nobody uses (a layer's weight, now held by its module) are dropped."""
    block.ops = [op for op in block.ops if not (op.role == "read" and not (set(op.outputs) & used))]
    for op in block.ops:
        for inner in op.blocks:
            _drop_unused_reads(inner, used)


def _annotate_frees(block: Block) -> None:
    """Mark on each op the values of its block that are dead after it (interpreter memory)."""
    local = set(block.inputs)
    for op in block.ops:
        local |= set(op.outputs)
    keep = {a for a in block.outputs if isinstance(a, int)}
    last: dict[int, int] = {}
    for v in block.inputs:
        last[v] = -1
    for i, op in enumerate(block.ops):
        for v in op.outputs:
            last[v] = i
        for v in uses(op):
            if v in local:
                last[v] = i
        for inner in op.blocks:
            _annotate_frees(inner)
    frees: dict[int, list[int]] = {}
    for v, i in last.items():
        if v not in keep and i >= 0:
            frees.setdefault(i, []).append(v)
    for i, op in enumerate(block.ops):
        op.frees = tuple(frees.get(i, ()))
