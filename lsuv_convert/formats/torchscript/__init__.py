"""TorchScript format plug-in: ``torch.jit.save`` files, traced or scripted, in and out.

The module's inlined forward graph is read node by node (:mod:`.program`) and run either
as a ``torch.fx`` graph (:mod:`.to_fx`, the engine's fx walker) or, when target layers
sit inside data-dependent ``prim::If`` / ``prim::Loop``, by an exact Python interpreter
over the TorchScript IR (:mod:`.interpreter`, the engine's hook walker). The output is the
loaded ScriptModule itself with its parameters updated (:mod:`.writer`): code, structure,
buffers and extra files unchanged, loadable by ``torch.jit.load`` / libtorch alone.
torch is imported only when a file is actually handled.
"""

from __future__ import annotations

from pathlib import Path

from ..model_graph import ModelGraph
from ..registry import register_format
from ..contract import LoadedModel, LoadRequest, ModelFormat


@register_format
class TorchScriptFormat(ModelFormat):
    name = "torchscript"
    extensions = (".pt", ".pth", ".torchscript", ".jit")

    def sniff(self, path: Path) -> bool:
        from .archive import is_torchscript

        return is_torchscript(Path(path))

    def read(self, path: Path, request: LoadRequest) -> LoadedModel:
        from .loader import load_script

        return load_script(path, trust_code=request.trust_code)

    def build(self, loaded: LoadedModel, inputs: list, check: bool) -> ModelGraph:
        """The translated graph; with ``check``, it must agree with the real ScriptModule on the batch."""
        from ...timings import stage
        from .loader import graph_of, prepare_inputs

        graph = graph_of(loaded)
        if check:
            with stage("fidelity_gate"):
                prepare_inputs(graph, inputs)
        return graph

    def account(self, graph: ModelGraph, reports) -> list:
        """The module's parameters, plus the file's parameters no conv / linear op uses as its weight."""
        from ...lsuv.account import skipped_entries

        return super().account(graph, reports) + skipped_entries(graph.state.skipped_params)

    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        from .write import save_script

        save_script(graph, Path(out_path))

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list, request=None) -> dict[str, tuple[float, float]]:
        from .archive import inspect_archive
        from .measure import measure_file

        inspect_archive(Path(model_path), check_code=not (request is not None and request.trust_code))
        return measure_file(Path(model_path), inputs)
