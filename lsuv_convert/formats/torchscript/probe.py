"""Per-layer output statistics of a saved TorchScript file, measured by TorchScript itself.

For ``lsuv-convert verify``: independent of the engine and of the fx translation. The file
is loaded with ``torch.jit.load``; in a copy of its inlined graph each conv / linear node
whose weight is a parameter gets a pass-through probe op on its output, and the JIT runs
that graph, control flow included. A probe records the first call per layer (first use),
which is what LSUV scaled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import DataError
from ...statistics import population_stats
from .layers import LAYER_KINDS, layer_name
from .quiet import jit_deprecation_silenced

_PROBE_NAMESPACE = "lsuv_convert_probe"
_library = None
_recording: dict[str, tuple[float, float]] | None = None


def _record(x: torch.Tensor, name: str) -> torch.Tensor:
    if _recording is not None and name not in _recording:
        _recording[name] = population_stats(x)
    return x


def _probe_kind() -> str:
    global _library
    if _library is None:
        lib = torch.library.Library(_PROBE_NAMESPACE, "DEF")
        lib.define("record(Tensor(a) x, str name) -> Tensor(a)")
        lib.impl("record", _record, "CompositeExplicitAutograd")
        _library = lib
    return f"{_PROBE_NAMESPACE}::record"


def _parameter_path(value, self_id: int) -> str | None:
    """Attribute path of a parameter read through a ``prim::GetAttr`` chain from ``self``."""
    names = []
    while True:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        names.append(node.s("name"))
        value = node.input()
        if value.unique() == self_id:
            return ".".join(reversed(names))


def _weight_input(node):
    schema_names = [a.name for a in torch._C.parse_schema(node.schema()).arguments]
    if node.kind() == "aten::addmm":
        mat2 = node.inputsAt(schema_names.index("mat2"))
        t = mat2.node()
        return t.input() if t.kind() == "aten::t" else mat2  # mat2 itself: an (in, out) weight (GPT-2 Conv1D)
    return node.inputsAt(schema_names.index("weight"))


def instrument(script_module) -> tuple[object, list[str]]:
    """A callable running the module's forward with probes, and the probed layer names."""
    graph = script_module.inlined_graph
    self_id = next(graph.inputs()).unique()
    params = {name for name, _ in script_module.named_parameters()}
    kind = _probe_kind()
    names: list[str] = []

    def walk(block):
        for node in list(block.nodes()):
            for sub in node.blocks():
                walk(sub)
            if node.kind() not in LAYER_KINDS:
                continue
            weight = _weight_input(node)
            path = _parameter_path(weight, self_id) if weight is not None else None
            if path is None or path not in params:
                continue
            name = layer_name(path)
            if name not in names:
                names.append(name)
            out = node.output()
            label = graph.create("prim::Constant")
            label.s_("value", name)
            label.output().setType(torch._C.StringType.get())
            label.insertAfter(node)
            probe = graph.create(kind, [out, label.output()])
            probe.output().setType(out.type())
            probe.insertAfter(label)
            out.replaceAllUsesWith(probe.output())
            probe.replaceInput(0, out)

    walk(graph.block())
    function = torch._C._create_function_from_graph("lsuv_probed_forward", graph)
    # A graph function knows no default values: pass forward's own for the arguments not fed.
    defaults = [a.default_value if a.has_default_value() else None for a in script_module.forward.schema.arguments[1:]]

    def run(*inputs):
        return function(script_module._c, *inputs, *defaults[len(inputs):])

    return run, names


def measure_file(path: Path, inputs: list[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """{layer name: (variance, mean)} of each conv / linear output at its first use."""
    global _recording
    with jit_deprecation_silenced():
        script_module = torch.jit.load(str(path), map_location="cpu")
    for module in script_module.modules():
        if module._c.hasattr("training"):
            module._c.setattr("training", False)
    run, _ = instrument(script_module)
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
