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

from ...errors import ModelFormatError
from ...graph import ModelGraph
from .. import register_format
from ..base import ModelFormat, check_inputs


@register_format
class TorchScriptFormat(ModelFormat):
    name = "torchscript"
    extensions = (".pt", ".pth", ".torchscript", ".jit")

    def sniff(self, path: Path) -> bool:
        from .archive import is_torchscript

        return is_torchscript(Path(path))

    def load(self, path: Path, *, weights: Path | None = None) -> ModelGraph:
        if weights is not None:
            raise ModelFormatError("a TorchScript file holds its own weights; --weights is for Caffe models", path=weights)
        from .loader import load_script

        return load_script(Path(path))

    def prepare(self, graph: ModelGraph, inputs: list) -> None:
        check_inputs(graph.inputs, inputs, graph.source)
        from .loader import prepare_inputs

        prepare_inputs(graph, inputs)

    def save(self, graph: ModelGraph, out_path: Path) -> None:
        from .writer import save_script

        save_script(graph, Path(out_path))

    def measure(self, model_path: Path, weights_path: Path | None, inputs: list, names: list[str]) -> dict[str, tuple[float, float]]:
        from .archive import inspect_archive
        from .probe import measure_file

        inspect_archive(Path(model_path))
        stats = measure_file(Path(model_path), inputs)
        return {n: stats[n] for n in names if n in stats} if names else stats
