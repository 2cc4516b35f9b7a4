"""state_dict checkpoints: ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` (``torch.save``) and ``.safetensors``.

A checkpoint holds tensors but no code, so the architecture is named with ``--arch``
(:mod:`.arch`) and built by its library (or the user's factory); the file's weights are found
however they are nested (:mod:`.locate`) and loaded into it; the engine walks the module's own
forward. The output is the checkpoint itself with only the initialized tensors' values changed
(:mod:`.checkpoint`). ``torch.save`` files are only ever read with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ModelFormatError, first_few
from ..contract import LoadedModel, LoadRequest, ModelFormat
from ..model_graph import ModelGraph
from ..shared.eager_graph import stored_dtype_notes
from ..registry import register_format

_TORCH_SAVE_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class StateDictState:
    checkpoint: Any  # checkpoint.Checkpoint
    located: Any  # locate.Located
    model: Any  # the architecture, with the file's weights
    stream: Any = None  # SafetensorsStream of a streamed checkpoint (model and checkpoint then hold meta tensors)


@register_format
class StateDictFormat(ModelFormat):
    name = "state_dict"
    extensions = _TORCH_SAVE_EXTENSIONS + (".safetensors",)
    options = frozenset({"arch"})

    def sniff(self, path: Path) -> bool:
        from ..shared.safetensors_io import is_safetensors
        from ..shared.torch_save import torch_save_kind

        if path.name.lower().endswith(".safetensors"):
            return is_safetensors(path)
        return torch_save_kind(path) is not None

    def read(self, path: Path, request: LoadRequest) -> LoadedModel:
        from ..shared.eager_graph import module_target_layers
        from ..shared.safetensors_io import provenance_of
        from .arch import build_architecture
        from .checkpoint import read_checkpoint
        from .streamed import streamed_checkpoint

        if not request.arch:  # said before the file is read: loading a large checkpoint to refuse it is waste
            folder = " (or give its folder, which has a config.json: a Hugging Face model folder)" if (
                path.parent / "config.json").is_file() else ""
            raise ModelFormatError(
                "is a checkpoint of tensors (state_dict) without the code of its architecture: name it with "
                f"--arch torchvision:NAME, timm:NAME or package.module:factory{folder}", path=path)
        streamed = streamed_checkpoint(path, request.arch) if request.stream else "--no-stream"
        if isinstance(streamed, str):
            checkpoint = read_checkpoint(path)  # refuses what needs a full unpickle, before any --arch code runs
            arch = build_architecture(request.arch, path)
            located, notes = load_into(arch.module, checkpoint.obj, request.arch, path)
            stream = None
            if request.stream:
                notes.append(f"loaded whole, not streamed: {streamed}")
        else:
            checkpoint, arch, located, stream = streamed
            from ..shared.stored_tensors import check_stored

            own = arch.module.state_dict(keep_vars=True)
            check_stored(own, {k: checkpoint.obj[located.file_key(k)] for k in own}, path)  # integer weights
            notes = [located.describe(), "streamed: each tensor read from the file when its layer runs, the fitted "
                     "ones written to the output then"] + _carried_note(located) + stored_dtype_notes(
                         [checkpoint.obj[located.file_key(k)] for k in arch.module.state_dict()])
        targets, tied = module_target_layers(arch.module)
        notes += tied
        return LoadedModel(format=self.name, source=path, inputs=arch.inputs,
                           state=StateDictState(checkpoint, located, arch.module, stream), targets=targets, notes=notes,
                           provenance=provenance_of(checkpoint.metadata))

    def build(self, loaded: LoadedModel, inputs: list, check: bool) -> ModelGraph:
        from ..shared.eager_graph import built_graph

        graph = built_graph(self.name, loaded, loaded.state.model, inputs, check, engine_path="hooks")
        return graph

    def stream_of(self, graph: ModelGraph):
        """The model's stream when it was built without its weights (see :mod:`...lsuv.streaming`)."""
        return graph.state.stream

    def account(self, graph: ModelGraph, reports) -> list:
        """The architecture's parameters, and the checkpoint's tensors beside them that it does not
        have as ``carried``."""
        from ...lsuv.account import carried_entries, module_graph_account

        located = graph.state.located
        carried = [{"name": key, "shape": list(located.mapping[key].shape),
                    "reason": "not an entry of the architecture: carried through unchanged"} for key in located.carried]
        return module_graph_account(graph.module, graph.targets, reports) + carried_entries(carried)

    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        from ..shared.eager_graph import copy_targets_into
        from .checkpoint import write_checkpoint

        state: StateDictState = graph.state
        if state.stream is not None:  # the fitted tensors are in the output already
            state.stream.commit()
            return
        copy_targets_into(graph, state.located.mapping, state.located.file_key, out_path)
        write_checkpoint(state.checkpoint, out_path, provenance)

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list, request=None):
        """The named architecture built afresh with the written weights, measured with hooks."""
        from ..shared.eager_graph import measure_module, model_args

        from dataclasses import replace

        loaded = self.read(model_path, replace(request or LoadRequest(), stream=False))  # measured with its weights
        return measure_module(loaded.state.model, model_args(inputs, loaded.inputs), loaded.targets)


def load_into(model, obj, arch: str, path: Path):
    """Find the weights in ``obj`` and load them into ``model``; (Located, notes)."""
    from ..shared.stored_tensors import check_stored
    from .locate import locate

    model_keys = list(model.state_dict().keys())
    located = locate(obj, model_keys, arch, path)
    weights = {k: located.mapping[located.file_key(k)] for k in model_keys}
    check_stored(model.state_dict(keep_vars=True), weights, path)  # ties, expanded and integer weights
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        shown = first_few(lines, 3, "; ")
        raise ModelFormatError(f"the checkpoint's tensors do not fit --arch {arch}: {shown or str(exc).splitlines()[0]}",
                               path=path) from None
    return located, [located.describe()] + _carried_note(located) + stored_dtype_notes(list(weights.values()))


def _carried_note(located) -> list[str]:
    notes = []
    if located.carried:
        notes.append(f"{len(located.carried)} tensor(s) beside the weights that the architecture does not have, carried "
                     f"through unchanged: {first_few(located.carried)}")
    if located.others:
        notes.append(f"also holds the same architecture at {', '.join(located.others)}: left unchanged")
    return notes
