"""Hugging Face model folders (``config.json`` + ``model.safetensors``, or shards with their index).

The folder is one model (:meth:`claims_directory`), written as ``NAME.lsuv/`` beside it. The
architecture is built by transformers from the folder's own ``config.json`` (``from_config``:
random weights, no download, no remote code), with the class the config names in
``architectures`` (``AutoModel`` otherwise); the folder's weights are loaded into it and the
engine walks the model's own forward. The output has the same files, shard layout, keys,
dtypes and safetensors metadata, with only the initialized tensors' values changed
(:mod:`.folder`). transformers is an optional extra: ``pip install 'lsuv-convert[hf]'``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ModelFormatError, first_line
from ..model_graph import ModelGraph
from ..registry import register_format
from ..contract import LoadedModel, LoadRequest, ModelFormat


@dataclass
class FolderState:
    shards: list  # folder.Shard, tensors updated in place at write
    model: Any  # the transformers model, with the folder's weights


@register_format
class HuggingFaceFormat(ModelFormat):
    name = "huggingface"
    extensions = ()  # a folder, never a single file

    @classmethod
    def claims_directory(cls, path: Path) -> bool:
        from .folder import is_model_folder

        return Path(path).is_dir() and is_model_folder(Path(path))

    def sniff(self, path: Path) -> bool:
        return self.claims_directory(path)

    def default_output(self, path: Path) -> Path:
        """``NAME.lsuv/`` beside the folder."""
        return path.with_name(f"{path.name}.lsuv")

    def read(self, path: Path, request: LoadRequest) -> LoadedModel:
        from ..shared.eager_graph import declared_inputs, module_target_layers
        from ..shared.safetensors_io import provenance_of
        from .folder import read_shards

        if not self.claims_directory(path):
            raise ModelFormatError("is not a Hugging Face model folder (config.json + model.safetensors)", path=path)
        model, notes = build_model(path)
        shards = read_shards(path)
        notes += load_weights(model, shards, path)
        targets, tied = module_target_layers(model)
        notes += tied
        if len(shards) > 1:
            notes.append(f"{len(shards)} shards, written back with the same layout")
        return LoadedModel(format=self.name, source=path, inputs=declared_inputs(model), state=FolderState(shards, model),
                           targets=targets, notes=notes, provenance=provenance_of(shards[0].metadata))

    def build(self, loaded: LoadedModel, inputs: list, check: bool) -> ModelGraph:
        from ..shared.eager_graph import built_graph

        return built_graph(self.name, loaded, loaded.state.model, inputs, check, engine_path="hooks")

    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        from ..shared.eager_graph import copy_targets_into
        from .folder import write_folder

        state: FolderState = graph.state
        tensors = {key: tensor for shard in state.shards for key, tensor in shard.tensors.items()}
        copy_targets_into(graph, tensors, lambda key: key, out_path)
        write_folder(graph.source, Path(out_path), state.shards, provenance)

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list, request=None):
        """The written folder loaded by transformers' own ``from_pretrained`` (local files only),
        each target's output measured with hooks."""
        from ..shared.eager_graph import declared_inputs, measure_module, model_args, module_target_layers

        transformers, torch = _libraries(model_path)
        config = _config(transformers, model_path)
        cls = _model_class(transformers, config)
        with _offline():
            try:
                model = cls.from_pretrained(str(model_path), config=config, local_files_only=True, dtype=torch.float32)
            except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder; one line names it
                raise ModelFormatError(f"transformers cannot load the folder: {first_line(exc)}", path=model_path) from None
        model.eval()
        targets, _ = module_target_layers(model)
        return measure_module(model, model_args(inputs, declared_inputs(model)), targets)


def _libraries(path: Path):
    try:
        import torch
        import transformers
    except ImportError:
        raise ModelFormatError("Hugging Face folders need transformers: pip install 'lsuv-convert[hf]'", path=path) from None
    transformers.utils.logging.disable_progress_bar()  # its bars would mix with the tool's own output
    return transformers, torch


@contextlib.contextmanager
def _offline():
    """transformers and huggingface_hub never reach the network inside."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _config(transformers, path: Path):
    import json

    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"config.json is not valid JSON: {exc}", path=path) from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ModelFormatError("config.json has no model_type: not a transformers model config", path=path)
    with _offline():
        try:
            return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - unknown model_type, remote code required, ...
            raise ModelFormatError(f"transformers cannot read config.json (model_type {raw.get('model_type')!r}; "
                                   f"models that need remote code are not run): {first_line(exc)}", path=path) from None


def _model_class(transformers, config):
    """The class ``config.architectures`` names when transformers has it, else AutoModel."""
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(name), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def build_model(path: Path):
    """(model with random weights built from config.json, notes)."""
    transformers, torch = _libraries(path)
    config = _config(transformers, path)
    cls = _model_class(transformers, config)
    with _offline():
        try:
            if cls is transformers.AutoModel:
                model = cls.from_config(config, dtype=torch.float32)
            else:
                model = cls._from_config(config, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - the model class refuses its config in many ways; one line names it
            raise ModelFormatError(f"transformers cannot build {cls.__name__} from config.json: {first_line(exc)}",
                                   path=path) from None
    model.eval()
    return model, [f"architecture: transformers {type(model).__name__} built from config.json (no download)"]


def load_weights(model, shards, path: Path) -> list[str]:
    """Load every tensor of the shards into ``model``; every model tensor must come from the
    folder, except names tied to one that does (an output layer sharing the embedding)."""
    import torch

    tensors = {key: t for shard in shards for key, t in shard.tensors.items()}
    own = model.state_dict(keep_vars=True)
    extra = [k for k in tensors if k not in own]
    in_file_ids = {id(own[k]) for k in tensors if k in own}
    missing = [k for k, v in own.items() if k not in tensors and id(v) not in in_file_ids]
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of {type(model).__name__} missing from the folder: {_first(missing)}")
        if extra:
            parts.append(f"{len(extra)} tensor(s) in the folder that {type(model).__name__} does not have: {_first(extra)}")
        raise ModelFormatError("the folder's weights do not match its config.json: " + "; ".join(parts), path=path)
    with torch.no_grad():
        for key, tensor in tensors.items():
            dest = own[key]
            if dest.shape != tensor.shape:
                raise ModelFormatError(f"{key} has shape {tuple(tensor.shape)} in the folder, {tuple(dest.shape)} in "
                                       f"the model its config.json builds", path=path)
            dest.copy_(tensor.to(dest.dtype))
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()
                     if t.is_floating_point() and t.dtype != torch.float32})
    return [f"weights stored as {', '.join(dtypes)}: LSUV runs in float32, values are written back as stored"] if dtypes else []


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
