"""ONNX format plug-in: load with onnx + onnx2torch, check against onnxruntime, write back weights only.

- read: parse and check the file (external data included; opset < 7 lifted for onnxruntime,
  :mod:`.runtime`), refuse quantized graphs, find the target layers and their stored weights
  (:mod:`.targets`), convert what leads to them to a torch.fx graph (:mod:`.convert`), nodes torch
  can't express running in onnxruntime (:mod:`.regions`).
- build: the fidelity gate (:mod:`.fidelity`): torch graph vs onnxruntime on (a sample of) the batch.
- write: the source ModelProto with only the target layers' stored values replaced (:mod:`.save`),
  checked (every target node must read exactly what LSUV measured; onnxruntime runs it again only
  where a lossy Cast chain makes that impossible), then written atomically (:mod:`.files`).
- measure_all: per-layer output statistics of a written file, computed by onnxruntime.

Heavy imports (onnx, torch, onnx2torch, onnxruntime) happen inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ModelFormatError
from ..model_graph import InputSpec, ModelGraph, TargetLayer
from ...timings import stage
from ..registry import register_format
from ..contract import LoadedModel, LoadRequest, ModelFormat


@dataclass
class OnnxState:
    """What save/measure need beyond the torch graph."""

    model: Any  # the source onnx.ModelProto, weights in memory
    external: dict  # initializer the source stored in an external data file -> that file
    plan: Any  # targets.TargetPlan
    converted: Any  # convert.Converted
    input_dtypes: list = field(default_factory=list)  # torch dtypes of the declared inputs
    batch: list | None = None  # the inputs the gate judged (a sample of the batch), for save's final check
    divergence: float | None = None  # worst relative torch-vs-onnxruntime difference at the gate
    source_model: Any = None  # the file as read, when ``model`` is it lifted to a newer opset (else None)
    judged_state: dict | None = None  # fidelity.state_outside(...) right after the gate

    def target_parameters(self) -> dict[str, list[str]]:
        return {self.converted.paths[t.label]: [slot.kind for slot in t.slots()] for t in self.plan.targets}


def looks_like_onnx(head: bytes) -> bool:
    """ModelProto files start with ir_version (field 1, varint): tag 0x08, then a small number."""
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 0x7F


@register_format
class OnnxFormat(ModelFormat):
    name = "onnx"
    extensions = (".onnx",)

    def sniff(self, path: Path) -> bool:
        try:
            with open(path, "rb") as fh:
                return looks_like_onnx(fh.read(2))
        except OSError:
            return False

    def read(self, path: Path, request: LoadRequest) -> LoadedModel:
        with stage("imports"):
            from . import convert, files, runtime, targets
        with stage("parse"):
            source_model, external = files.read_model(path)
            model, lifted = runtime.runnable(source_model)
            targets.refuse_quantized(model, path)
            plan = targets.find_targets(model)
        if not plan.targets:
            raise ModelFormatError(targets.nothing_to_initialize(model), path=path)
        with stage("conversion"):
            working, converted = convert.converted_working(model, path, plan)
            plan = working.plan
        del working.model
        inputs, dtypes = _input_specs(model)
        state = OnnxState(model=model, external=external, plan=plan, converted=converted, input_dtypes=dtypes,
                          source_model=source_model)
        notes = ([lifted] if lifted else []) + list(plan.notes) + list(working.notes) + list(converted.notes)
        if external:
            notes.append(f"{len(external)} initializer(s) read from external data; written back the same way")
        return LoadedModel(format=self.name, source=path, inputs=inputs, state=state, notes=notes,
                           targets=_targets(plan, converted))

    def build(self, loaded: LoadedModel, inputs: list[Any], check: bool) -> ModelGraph:
        """The converted graph; with ``check``, the fidelity gate: refuse a conversion onnxruntime disagrees with."""
        from . import fidelity

        state: OnnxState = loaded.state
        graph = ModelGraph(module=state.converted.module, targets=list(loaded.targets), inputs=loaded.inputs,
                           format=self.name, source=loaded.source, state=state, notes=list(loaded.notes),
                           engine_path="fx")
        if check:
            with stage("fidelity_gate"):
                worst, judged = fidelity.gate(
                    graph.module, state.model, inputs, state.converted.tensors,
                    [t.output for t in state.plan.targets], state.input_dtypes, state.converted.node_names, graph.source,
                )
            state.batch = judged
            state.divergence = worst
            state.judged_state = fidelity.state_outside(graph.module, state.target_parameters())
            size = len(inputs[0]) if inputs and getattr(inputs[0], "ndim", 0) else None
            on = (f"the first {len(judged[0])} of the batch's {size} samples" if judged and size and len(judged[0]) < size
                  else "the batch")
            graph.notes.append(
                f"fidelity gate passed: torch graph vs onnxruntime on {on}, worst relative difference {worst:.2g} "
                f"over {len(state.plan.targets)} target outputs and the model outputs"
            )
        return graph

    def account(self, graph: ModelGraph, reports) -> list:
        """The file's stored tensors under the file's names, each once (see :mod:`.account`)."""
        from .account import file_account

        state: OnnxState = graph.state
        return file_account(state.model, state.plan, {t.module_path: t.name for t in graph.targets}, reports)

    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        from . import fidelity, files, runtime, write

        state: OnnxState = graph.state
        source = state.source_model if state.source_model is not None else state.model
        with stage("serialize"):
            output = write.build_output(source, state.plan, state.converted.paths, graph.module, set(state.external))
        graph.notes.extend(n for n in output.notes if n not in graph.notes)
        with stage("final_check"):  # the written weights must mean in onnxruntime what LSUV measured in torch
            off = write.read_differently(output, state.plan, state.converted.paths, graph.module)
            if fidelity.state_outside(graph.module, state.target_parameters()) != state.judged_state:
                off.insert(0, "the torch graph beyond the target weights (changed since the gate)")
            if off:
                fidelity.check(
                    graph.module, runtime.runnable(output.materialized())[0], state.batch, state.converted.tensors,
                    [t.output for t in state.plan.targets], state.input_dtypes, state.converted.node_names, graph.source,
                    what="the initialized model",
                )
        graph.notes.append(
            f"written file checked by onnxruntime on the gate's inputs, for what it can't be proven equal on: "
            f"{', '.join(off[:4])}{f' and {len(off) - 4} more' if len(off) > 4 else ''}" if off else
            "written file checked without running it: every target node reads, bit for bit, the weights LSUV "
            "measured in torch, and nothing else in the torch graph changed since the gate"
        )
        with stage("write"):
            files.write_model(output.model, Path(out_path), output.external, keep=set(state.external.values()),
                              initializers=output.initializers)

    def read_files(self, loaded: LoadedModel) -> list[Path]:
        return [*super().read_files(loaded), *sorted(set(loaded.state.external.values()))]

    def output_files(self, out_path: Path) -> list[Path]:
        """The model and the external data file written beside it when the source kept weights outside."""
        out_path = Path(out_path)
        return [out_path, out_path.with_name(out_path.name + ".data")]

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list[Any], request=None):
        """{layer name: (variance, mean)} of each target layer's output, computed by onnxruntime."""
        from . import files, runtime, targets
        from ...lsuv.statistics import population_stats

        model, _ = files.read_model(Path(model_path))
        model, _ = runtime.runnable(model)
        by_label = {t.label: t for t in targets.find_targets(model).targets}
        values = runtime.run(model, inputs, [t.output for t in by_label.values()])
        return {n: population_stats(values[t.output]) for n, t in by_label.items()}


def _targets(plan, converted) -> list[TargetLayer]:
    """A layer whose weight an earlier layer also reads is scaled with it (one tensor, first use),
    so only first uses are listed; write() still writes every layer of the plan."""
    return [TargetLayer(name=t.label, op=t.op, module_path=converted.paths[t.label], binding=t)
            for t in plan.targets if t.shares_weight_with is None]


def _input_specs(model) -> tuple[list[InputSpec], list]:
    import onnx
    import torch

    from .runtime import graph_inputs
    from .targets import index_bounds

    bounds = index_bounds(model)
    specs, dtypes = [], []
    for value in graph_inputs(model):
        tensor_type = value.type.tensor_type
        shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) if tensor_type.elem_type else None
        dtype_name = str(np_dtype) if np_dtype is not None else "float32"
        specs.append(InputSpec(name=value.name, shape=shape, dtype=dtype_name, high=bounds.get(value.name)))
        dtypes.append(_torch_dtype(torch, np_dtype))
    return specs, dtypes


def _torch_dtype(torch, np_dtype):
    import numpy as np

    if np_dtype is None:
        return None
    try:
        return torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype
    except TypeError:
        return None
