"""Per-layer output statistics of a saved TorchScript file, measured by TorchScript itself.

For ``lsuv-convert verify``: independent of the engine and of the fx translation. The file
is loaded with ``torch.jit.load``; in a copy of its inlined graph each target node (found by
the same reader the conversion uses, so the names are the conversion log's) gets a
pass-through probe op on its output, and the JIT runs that graph, control flow included. A
probe records the first call per layer (first use), which is what LSUV scaled. Where the
conversion fitted several maps in one layer, so does the probe:

* a linear layer whose output is split into q / k / v (packed ``in_proj_weight``, GPT-2's
  ``c_attn``, a timm ``qkv``): the statistics of each equal slice of the output, ``NAME[q]`` ...;
* the fused ``aten::_native_multi_head_attention``: q, k and v recomputed with ``F.linear`` from
  the node's own inputs and the rows of its packed weight, and the node's output (after the
  output projection) as ``NAME.out_proj``;
* a linear on rows of a packed weight (cross-attention's ``q | kv``) is a layer of its own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import DataError, ModelFormatError
from ...lsuv.statistics import population_stats
from .layers import scales_without_rerun
from .quiet import jit_deprecation_silenced

_PROBE_NAMESPACE = "lsuv_convert_probe"
_PART_LABELS = {3: "qkv", 2: "kv"}  # as the engine names the maps of a packed weight
_library = None
_recording: dict[str, tuple[float, float]] | None = None


def _keep(name: str, x: torch.Tensor) -> None:
    if _recording is not None and name not in _recording:
        _recording[name] = population_stats(x)


def _record(x: torch.Tensor, name: str, parts: int) -> torch.Tensor:
    if parts > 1 and x.shape[-1] % parts == 0:
        labels = _PART_LABELS.get(parts) or [str(i) for i in range(parts)]
        for label, part in zip(labels, x.split(x.shape[-1] // parts, dim=-1)):
            _keep(f"{name}[{label}]", part)
    else:
        _keep(name, x)
    return x


def _record_attention(out, query, key, value, weight, bias, name: str) -> torch.Tensor:
    if _recording is not None and f"{name}.out_proj" not in _recording:
        e = weight.shape[0] // 3
        for i, (label, x) in enumerate(zip("qkv", (query, key, value))):
            b = bias[i * e:(i + 1) * e] if bias is not None else None
            _keep(f"{name}.in_proj_weight[{label}]", torch.nn.functional.linear(x, weight[i * e:(i + 1) * e], b))
        _keep(f"{name}.out_proj", out)
    return out


def _probe_ops() -> tuple[str, str]:
    global _library
    if _library is None:
        lib = torch.library.Library(_PROBE_NAMESPACE, "DEF")
        lib.define("record(Tensor(a) x, str name, int parts) -> Tensor(a)")
        lib.impl("record", _record, "CompositeExplicitAutograd")
        lib.define("record_attention(Tensor(a) out, Tensor query, Tensor key, Tensor value, Tensor weight, "
                   "Tensor? bias, str name) -> Tensor(a)")
        lib.impl("record_attention", _record_attention, "CompositeExplicitAutograd")
        _library = lib
    return f"{_PROBE_NAMESPACE}::record", f"{_PROBE_NAMESPACE}::record_attention"


def instrument(script_module, path: Path | None = None) -> tuple[object, list[str]]:
    """A callable running the module's forward with probes, and the probed layer names (targets)."""
    from .program import ProgramError, read_program, specialised_graph

    graph = specialised_graph(script_module)
    try:
        program = read_program(script_module, graph)
    except ProgramError as exc:
        raise ModelFormatError(f"cannot run this TorchScript graph: {exc}", path=path) from None
    record, record_attention = _probe_ops()
    names = [program.layer_names[path] for path in program.layers]

    def constant(value, kind, after):
        node = graph.create("prim::Constant")
        if kind == "s":
            node.s_("value", value)
            node.output().setType(torch._C.StringType.get())
        else:
            node.i_("value", value)
            node.output().setType(torch._C.IntType.get())
        node.insertAfter(after)
        return node

    def probe(node, path: str):
        calls = program.layers[path]
        name = program.layer_names[path]
        out = node.outputsAt(0)
        label = constant(name, "s", node)
        if calls[0].family == "attention":
            schema = [a.name for a in torch._C.parse_schema(node.schema()).arguments]
            args = [node.inputsAt(schema.index(n)) for n in ("query", "key", "value", "qkv_weight", "qkv_bias")]
            inserted = graph.create(record_attention, [out, *args, label.output()])
            inserted.insertAfter(label)
        else:
            parts = program.layer_parts.get(path, 1) if scales_without_rerun(calls) else 1
            count = constant(parts, "i", label)
            inserted = graph.create(record, [out, label.output(), count.output()])
            inserted.insertAfter(count)
        inserted.output().setType(out.type())
        out.replaceAllUsesWith(inserted.output())
        inserted.replaceInput(0, out)

    def walk(block):
        for node in list(block.nodes()):
            for sub in node.blocks():
                walk(sub)
            outputs = list(node.outputs())
            path = program.layer_outputs.get(outputs[0].unique()) if outputs else None
            if path is not None:
                probe(node, path)

    walk(graph.block())
    function = torch._C._create_function_from_graph("lsuv_probed_forward", graph)
    # A graph function knows no default values: pass forward's own for the arguments not fed.
    defaults = [a.default_value if a.has_default_value() else None for a in script_module.forward.schema.arguments[1:]]

    def run(*inputs):
        return function(script_module._c, *inputs, *defaults[len(inputs):])

    return run, names


def measure_file(path: Path, inputs: list[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """{map name: (variance, mean)} of each target's output at its first use (q / k / v of a packed
    weight, and an attention's output projection, each as its own entry, named as in the log)."""
    global _recording
    with jit_deprecation_silenced():
        script_module = torch.jit.load(str(path), map_location="cpu")
    for module in script_module.modules():
        if module._c.hasattr("training"):
            module._c.setattr("training", False)
    run, _ = instrument(script_module, path)
    dtype = next((p.dtype for p in script_module.parameters() if p.is_floating_point()), torch.float32)
    args = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
    _recording = {}
    try:
        with torch.no_grad(), torch.jit.optimized_execution(False):
            run(*args)
        return dict(_recording)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise DataError(f"the model cannot run on the batch: {lines[-1] if lines else exc}", path=path) from None
    finally:
        _recording = None
