"""Hugging Face model folders (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
single or sharded with their index).

The folder is one model (:meth:`claims_directory`), written as ``NAME.lsuv/`` beside it. The model
is built and loaded by transformers itself, as ``from_pretrained`` loads a local folder
(:mod:`.loading`: the class ``config.json`` names, every key renaming, converter, tied weight and
parametrization of the installed transformers; no download, no remote code); the engine walks
the model's own forward. The output has the same files, shard layout, keys, dtypes and metadata,
with only the initialized tensors' values changed, each written under the file key it was loaded
from (:mod:`.folder`). Tensors of the folder the model does not take are carried through unchanged
(the account lists them as ``carried``). transformers is an optional extra:
``pip install 'lsuv-convert[hf]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ModelFormatError, first_few
from ..contract import LoadedModel, LoadRequest, ModelFormat
from ..model_graph import ModelGraph
from ..registry import register_format


@dataclass
class FolderState:
    shards: list  # folder.Shard, tensors updated in place at write
    model: Any  # the transformers model, with the folder's weights
    keys: list  # loading.FileKey: each file key, its shard and the model entry it loads into
    stream: Any = None  # SafetensorsStream of a streamed folder (model and shards then hold meta tensors)


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
        from ..shared.stored_tensors import check_stored
        from ..shared.eager_graph import stored_dtype_notes
        from .folder import read_shards, weight_files
        from .loading import file_named, key_notes, load_model
        from .streamed import streamed_model

        if not self.claims_directory(path):
            raise ModelFormatError("is not a Hugging Face model folder (config.json + model.safetensors or "
                                   "pytorch_model.bin)", path=path)
        _, others = weight_files(path)
        streamed = streamed_model(path) if request.stream else "--no-stream"
        if isinstance(streamed, str):
            shards = read_shards(path)
            model, keys, notes = load_model(path, shards)
            stream = None
            if request.stream:
                notes.append(f"loaded whole, not streamed: {streamed}")
        else:
            model, keys, shards, stream = streamed
            notes = [f"architecture: transformers {type(model).__name__} built from config.json without its "
                     "weights; streamed: each tensor read from the folder when its layer runs, the fitted ones "
                     "written to the output then (local files only, no remote code)"] + key_notes(keys) + \
                stored_dtype_notes([t for shard in shards for t in shard.tensors.values()])
        check_stored(*_stored_by_entry(model, shards, keys), path)  # ties, expanded and integer weights
        targets, tied = module_target_layers(model)
        targets = file_named(targets, keys)
        notes += tied
        if others:
            notes.append(f"weights read from {shards[0].name if len(shards) == 1 else 'the shards of its index'}, as "
                         f"transformers prefers them; {', '.join(others)} copied unchanged")
        if len(shards) > 1:
            notes.append(f"{len(shards)} shards, written back with the same layout")
        carried = [fk for fk in keys if fk.param is None]
        if carried:
            notes.append(f"{len(carried)} tensor(s) of the folder that {type(model).__name__} does not take: "
                         "carried through unchanged")
        return LoadedModel(format=self.name, source=path, inputs=declared_inputs(model),
                           state=FolderState(shards, model, keys, stream), targets=targets, notes=notes,
                           provenance=provenance_of(shards[0].metadata))

    def build(self, loaded: LoadedModel, inputs: list, check: bool) -> ModelGraph:
        from ..shared.eager_graph import built_graph

        graph = built_graph(self.name, loaded, loaded.state.model, inputs, check, engine_path="hooks")
        graph.run_inputs = with_decoder_inputs(loaded.state.model, graph.run_inputs)
        return graph

    def stream_of(self, graph: ModelGraph):
        """The model's stream when it was built without its weights (see :mod:`...lsuv.streaming`)."""
        return graph.state.stream

    def account(self, graph: ModelGraph, reports) -> list:
        """The module's parameters under the file's keys, and the folder's tensors the model does
        not take as ``carried``."""
        from ...lsuv.account import carried_entries, module_graph_account

        state: FolderState = graph.state
        names = {fk.param: fk.key for fk in state.keys if fk.param is not None and not fk.converted}
        return (module_graph_account(graph.module, graph.targets, reports, param_names=names)
                + carried_entries(_carried(state)))

    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        from ...folders import folder_links

        state: FolderState = graph.state
        if state.stream is not None:  # the fitted tensors are in the output already
            state.stream.commit()
            links = folder_links(graph.source)  # copied as links by the staged folder, as write_folder does
        else:
            links = self._write_whole(graph, state, out_path, provenance)
        if links:
            graph.notes.append(f"links to folders copied as links, not followed: {first_few(links)}")

    def _write_whole(self, graph: ModelGraph, state, out_path: Path, provenance: dict) -> list[str]:
        from ..shared.eager_graph import copy_into, fitted_state
        from .folder import write_folder
        from .loading import file_values

        tensors = {key: tensor for shard in state.shards for key, tensor in shard.tensors.items()}
        renamed, converted = file_values(state.model, state.keys, set(fitted_state(graph, out_path)))
        copy_into(tensors, renamed)
        copy_into(tensors, {k: v for k, v in converted.items() if not _equal_as_stored(tensors[k], v)})
        return write_folder(graph.source, Path(out_path), state.shards, provenance)

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list, request=None):
        """The written folder loaded as :meth:`read` loads it (transformers' ``from_pretrained``,
        local files only), each target's output measured with hooks, named as the file names it."""
        from ..shared.eager_graph import measure_module, model_args

        from dataclasses import replace

        loaded = self.read(model_path, replace(request or LoadRequest(), stream=False))  # measured with its weights
        model = loaded.state.model
        return measure_module(model, with_decoder_inputs(model, model_args(inputs, loaded.inputs)), loaded.targets)


def _stored_by_entry(model, shards, keys) -> tuple[dict, dict]:
    """(the model's state_dict entries, the file's tensor loaded into each of them) for the
    stored-tensor rule; tensors a converter fuses or splits on load are not stored as loaded."""
    own = model.state_dict(keep_vars=True)
    by_shard = {shard.name: shard.tensors for shard in shards}
    stored = {fk.param: by_shard[fk.shard][fk.key] for fk in keys
              if fk.param in own and not fk.converted and fk.key in by_shard.get(fk.shard, {})}
    return own, stored


def _carried(state: FolderState) -> list[dict]:
    """The folder's tensors the model does not take, for the account."""
    shard_of = {shard.name: shard for shard in state.shards}
    return [{"name": fk.key, "shape": list(shard_of[fk.shard].tensors[fk.key].shape),
             "reason": f"in {fk.shard}, not an entry of {type(state.model).__name__}: carried through unchanged"}
            for fk in state.keys if fk.param is None]


def _equal_as_stored(stored, value) -> bool:
    import torch

    return stored.shape == value.shape and bool(torch.equal(stored, value.to(stored.dtype)))


def with_decoder_inputs(model, args: list) -> list:
    """An encoder-decoder model (T5, BART, ...) given token ids alone: its decoder takes the same
    ids shifted right, as in training with teacher forcing (the model's own
    ``prepare_decoder_input_ids_from_labels`` / ``_shift_right``), passed in its forward's
    ``decoder_input_ids`` place after the inputs the batch gives (ids, attention mask). Any other
    model, or a batch that gives decoder ids: ``args`` as they are."""
    import inspect

    config = getattr(model, "config", None)
    if not args or not getattr(config, "is_encoder_decoder", False) or args[0].is_floating_point():
        return args
    try:
        names = list(inspect.signature(type(model).forward).parameters)[1:]  # the class's: past self
    except (TypeError, ValueError):
        return args
    place = names.index("decoder_input_ids") if "decoder_input_ids" in names else -1
    if place < len(args):  # no such input, or the batch gives it already
        return args
    return [*args, *([None] * (place - len(args))), _shifted_right(model, args[0])]


def _shifted_right(model, ids):
    """The model's own shift (``prepare_decoder_input_ids_from_labels`` / ``_shift_right``), else the
    ids shifted right behind the decoder start token (pad, else 0) where the config names none."""
    import torch

    for method in ("prepare_decoder_input_ids_from_labels", "_shift_right"):
        shift = getattr(model, method, None)
        if callable(shift):
            try:
                return shift(ids)
            except Exception:  # noqa: BLE001 - e.g. no decoder_start_token_id in the config
                continue
    config = model.config
    start = next((t for t in (getattr(config, "decoder_start_token_id", None), getattr(config, "pad_token_id", None))
                  if isinstance(t, int)), 0)
    return torch.cat([torch.full_like(ids[:, :1], start), ids[:, :-1]], dim=1)
