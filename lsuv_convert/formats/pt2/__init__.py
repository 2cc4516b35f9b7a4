"""torch.export programs (``.pt2``, ``torch.export.save``) in and out.

Loaded with ``torch.export.load``; the program's own fx graph (``ep.module()``) is what the
engine walks, its conv / linear calls made target modules that share the program's parameters
(:mod:`.program`). Written with ``torch.export.save``: the same program, graph, signature,
buffers, constants, example inputs and extra files, with only the initialized parameters'
values changed, plus an extra file ``lsuv_convert.json`` recording how they were made.
"""

from __future__ import annotations

from pathlib import Path

from ..model_graph import ModelGraph
from ..registry import register_format
from ..contract import LoadedModel, LoadRequest, ModelFormat


@register_format
class Pt2Format(ModelFormat):
    name = "pt2"
    extensions = (".pt2",)

    def sniff(self, path: Path) -> bool:
        from .program import is_pt2

        return is_pt2(path)

    def read(self, path: Path, request: LoadRequest) -> LoadedModel:
        from ...errors import ModelFormatError
        from .program import graph_module, load_program, program_inputs, provenance_in

        state = load_program(path, trust_code=request.trust_code)
        try:
            inputs = program_inputs(state.program)
        except ModelFormatError as exc:
            raise ModelFormatError(str(exc), path=path) from None
        gm, targets, notes = graph_module(state.program, path)
        state.graph_module = gm
        notes.insert(0, "engine path: fx (the program's own graph, conv / linear calls as target modules)")
        return LoadedModel(format=self.name, source=path, inputs=inputs, state=state, targets=targets, notes=notes,
                           provenance=provenance_in(state))

    def build(self, loaded: LoadedModel, inputs: list, check: bool) -> ModelGraph:
        from ..shared.eager_graph import built_graph

        return built_graph(self.name, loaded, loaded.state.graph_module, inputs, check, engine_path="fx")

    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        from .program import save_program

        save_program(graph.state, graph.module, graph.targets, Path(out_path), provenance)

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list, request=None):
        """The written program loaded afresh with torch.export.load, each target's output hooked."""
        from ..shared.eager_graph import measure_module, model_args

        loaded = self.read(Path(model_path), request or LoadRequest())
        gm = loaded.state.graph_module
        return measure_module(gm, model_args(inputs, loaded.inputs), loaded.targets)
