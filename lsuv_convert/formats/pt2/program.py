"""An ExportedProgram's graph as the engine's graph, and the program written back.

``ep.module()`` is a ``torch.fx.GraphModule`` whose parameters are the program's own
``state_dict`` tensors (shared storage). Its conv / linear calls are ``call_function`` nodes
on aten ops with the weight read by a ``get_attr`` node; each such node is replaced by a
``call_module`` node of a module that holds that very parameter and calls the node's own op
with the node's own arguments (:mod:`.layers`), so the engine can hook it and the result
is bit for bit the program's.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ...atomic import atomic_path
from ...errors import ConversionError, ModelFormatError, OutputError, first_line
from ..model_graph import InputSpec, TargetLayer
from ..shared.layer_calls import layer_name
from .layers import LAYER_KINDS, LayerCall, build_layer

PROVENANCE_FILE = "lsuv_convert.json"  # extra file of the written program: how it was made
CONTAINER = "lsuv_layers"  # the submodule of the GraphModule that holds the target modules


@dataclass
class ProgramState:
    program: Any  # torch.export.ExportedProgram, as loaded (its state_dict is updated in place)
    extra_files: dict[str, Any]
    mutated_buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # copies of buffers the graph writes
    graph_module: Any = None  # the engine's GraphModule (made at load: it doesn't depend on the batch)


def is_pt2(path: Path) -> bool:
    """A zip with ``<name>/archive_format`` reading ``pt2`` (what torch.export.save writes)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/archive_format") and n.count("/") == 1]
            return bool(names) and zf.read(names[0]).strip() == b"pt2"
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return False


def extra_file_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        out = []
        for name in zf.namelist():
            parts = name.split("/", 2)
            if len(parts) == 3 and parts[1] == "extra" and parts[2]:
                out.append(parts[2])
        return sorted(out)


def load_program(path: Path, *, trust_code: bool = False) -> ProgramState:
    """The program of ``path``; unless ``trust_code``, only after its operators passed the allowlist."""
    if not is_pt2(path):
        raise ModelFormatError("is not a torch.export program (torch.export.save writes a zip with archive_format "
                               "'pt2')", path=path)
    if not trust_code:
        from .opcheck import check_program_ops

        check_program_ops(path)
    extra = {name: "" for name in extra_file_names(path)}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for damaged / newer files
        raise ModelFormatError(f"torch.export.load cannot read it: {first_line(exc)}", path=path) from None
    mutated = {name: program.state_dict[name].detach().clone()
               for name in program.graph_signature.buffers_to_mutate.values() if name in program.state_dict}
    return ProgramState(program, extra, mutated)


def provenance_in(state: ProgramState) -> dict:
    text = state.extra_files.get(PROVENANCE_FILE)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def program_inputs(program) -> list[InputSpec]:
    """The user inputs as the program declares them (dynamic dims as None)."""
    from torch.export.graph_signature import InputKind

    user = {s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT
            and hasattr(s.arg, "name")}
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            shape = tuple(d if isinstance(d, int) else None for d in val.shape)
            dtype = str(val.dtype).replace("torch.", "")
            specs.append(InputSpec(node.name, shape, dtype if dtype != "bool" else "bool"))
        else:
            raise ModelFormatError(f"input {node.name!r} is not a tensor ({type(val).__name__}): not supported")
    return specs


def graph_module(program, path: Path) -> tuple[fx.GraphModule, list[TargetLayer], list[str]]:
    """``program.module()`` with every conv / linear call on a parameter made a target module."""
    gm = program.module()
    params = {name: p for name, p in gm.named_parameters(remove_duplicate=False)}
    calls: dict[str, list[tuple[fx.Node, LayerCall]]] = {}
    for node in gm.graph.nodes:
        call = _layer_call(node, params)
        if call is not None:
            calls.setdefault(call.weight_path, []).append((node, call))
    if not calls:
        raise ModelFormatError("has no conv / linear op whose weight is a parameter: nothing to initialize", path=path)
    container = nn.Module()
    gm.add_module(CONTAINER, container)
    targets, notes = [], []
    replaced: dict[fx.Node, fx.Node] = {}  # call nodes already made module calls (later calls may take them)
    for weight_path, uses in calls.items():
        layer_calls = [c for _, c in uses]
        if len({c.bias_path for c in layer_calls}) > 1:
            for c in layer_calls:
                c.pass_bias_at_call_time()
        variants: list[LayerCall] = []
        index_of: dict[tuple, int] = {}
        for c in layer_calls:
            sig = c.signature()
            if sig not in index_of:
                index_of[sig] = len(variants)
                variants.append(c)
        bias_path = variants[0].bias_path
        module = build_layer(variants, params[weight_path], params[bias_path] if bias_path else None)
        child = _child_name(weight_path, container)
        container.add_module(child, module)
        module_path = f"{CONTAINER}.{child}"
        for node, c in uses:
            lead = (index_of[c.signature()],) if len(variants) > 1 else ()
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(module_path, lead + tuple(replaced.get(d, d) for d in c.dynamic))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            replaced[node] = new
            gm.graph.erase_node(node)
        targets.append(TargetLayer(name=layer_name(weight_path), op=variants[0].kind, module_path=module_path,
                                   binding=(weight_path, bias_path)))
        if len(uses) > 1:
            notes.append(f"{layer_name(weight_path)}: one weight used by {len(uses)} calls, scaled once at its first use")
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    # A plain GraphModule over the same graph and tensors: ep.module()'s own class refuses
    # eval()/train() (the program's mode is baked into its ops), which the engine and hooks call.
    plain = fx.GraphModule(gm, gm.graph, class_name="ExportedForward")
    return plain, targets, notes


def _child_name(weight_path: str, container: nn.Module) -> str:
    base = layer_name(weight_path).replace(".", "_") or "layer"
    name, i = base, 1
    while hasattr(container, name):
        i += 1
        name = f"{base}_{i}"
    return name


def _layer_call(node: fx.Node, params: dict[str, nn.Parameter]) -> LayerCall | None:
    """A LayerCall for a conv / linear call_function node whose weight is a parameter."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return None
    kind = op._schema.name
    if kind not in LAYER_KINDS:
        return None
    schema_args = op._schema.arguments
    named = [(schema_args[i].name, a) for i, a in enumerate(node.args)] + list(node.kwargs.items())
    values = dict(named)

    def param_of(value):
        if isinstance(value, fx.Node) and value.op == "get_attr" and value.target in params:
            return value.target
        return None

    weight_path = param_of(values.get("weight"))
    if weight_path is None:
        return None
    if kind in ("aten::_convolution", "aten::convolution"):
        transposed = values.get("transposed")
        if not isinstance(transposed, bool):
            return None
        family = "conv_transpose" if transposed else "conv"
    elif "conv_transpose" in kind:
        family = "conv_transpose"
    elif "conv" in kind:
        family = "conv"
    else:
        family = "linear"
    groups = values.get("groups", 1)
    if not isinstance(groups, int) or groups < 1:
        return None
    bias = values.get("bias")
    bias_path = param_of(bias)
    linear_in_weight = bias is None or bias_path is not None
    slots, dynamic = [], []
    for name, value in named:
        if name == "weight":
            slots.append(("weight",))
        elif name == "bias" and bias_path is not None:
            slots.append(("bias",))
        elif isinstance(value, fx.Node):
            slots.append(("dynamic", len(dynamic)))
            dynamic.append(value)
        else:
            slots.append(("const", value))
    kw_names = tuple(node.kwargs)
    return LayerCall(kind, family, op, kw_names, slots, weight_path, bias_path, groups, dynamic, linear_in_weight,
                     bias if bias_path is not None else None)


def save_program(state: ProgramState, gm: fx.GraphModule, targets: list[TargetLayer], out_path: Path,
                 provenance: dict) -> None:
    """The loaded program with the targets' values in its state_dict, everything else as loaded."""
    program = state.program
    sd = program.state_dict
    with torch.no_grad():
        for target in targets:
            layer = gm.get_submodule(target.module_path)
            weight_path, bias_path = target.binding
            pairs = [(weight_path, layer.weight)] + ([(bias_path, layer.bias)] if bias_path else [])
            for name, value in pairs:
                if not bool(torch.isfinite(value).all()):
                    raise ConversionError(f"layer {target.name} has non-finite weights; nothing was written", path=out_path)
                dest = sd[name]
                if dest.data_ptr() != value.data_ptr():
                    dest.copy_(value.detach().to(dest.device, dest.dtype))
        for name, saved in state.mutated_buffers.items():  # buffers the forward wrote while LSUV ran
            sd[name].copy_(saved)
    extra = dict(state.extra_files)
    if provenance:
        extra[PROVENANCE_FILE] = json.dumps(provenance, sort_keys=True)
    with atomic_path(out_path) as tmp:
        try:
            torch.export.save(program, str(tmp), extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - torch.export.save raises many kinds; one line names it
            raise OutputError(f"torch.export.save failed: {first_line(exc)}", path=out_path) from None
