"""A Hugging Face model built and loaded the way ``from_pretrained`` loads a local folder, and the
map from each file key to the model parameter it loads into (and back).

transformers 5 names modules otherwise than the files it writes (ViT's ``layers.0.attention.q_proj``
is ``encoder.layer.0.attention.attention.query`` in ``model.safetensors``), maps old spellings
(``weight_g`` -> ``parametrizations.weight.original0``, ``gamma`` -> ``weight``), adds or strips the
base model's prefix, and for some models splits or fuses tensors. All of that is transformers'
own code: the folder's tensors (read by :mod:`.folder`, so that ``.bin`` files only ever go through
the weights-only unpickler) are handed to ``from_pretrained(None, config=..., state_dict=...)``, and
the key map is computed with the same functions its loader uses (:func:`key_map`). Nothing is
downloaded and no code from the folder runs (``local_files_only``, ``trust_remote_code=False``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelFormatError, first_few, first_line
from ..shared.eager_graph import stored_dtype_notes


@dataclass(frozen=True)
class FileKey:
    """One tensor of the folder and where it goes in the model."""

    key: str  # the tensor's key in the file
    shard: str  # the file of the folder holding it
    param: str | None  # the model's state_dict name it loads into; None: the model has no such entry
    converted: bool = False  # split / fused by a transformers converter on load (reverted on save)


def key_map(model, keys_by_shard: dict[str, list[str]]) -> list[FileKey]:
    """Each file key, in shard order, with the model state_dict name transformers loads it into.

    The renaming is transformers' own (``core_model_loading.rename_source_key`` with the conversions
    ``from_pretrained`` recorded on the model, the base-model prefix rule included), applied as its
    loader applies it. Needs only the keys and the model's state_dict names, so a model on the meta
    device does as well."""
    try:
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4: modules are named as the files are
        names = set(model.state_dict().keys())
        return [FileKey(k, shard, k if k in names else None) for shard, keys in keys_by_shard.items() for k in keys]
    conversions = _conversions(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    own = model.state_dict()
    prefix = model.base_model_prefix
    out = []
    for shard, keys in keys_by_shard.items():
        for key in keys:
            renamed, pattern = rename_source_key(key, renamings, converters, prefix, own)
            if renamed not in own and key in own:  # as the loader does: no renaming, maybe the prefix
                renamed, pattern = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=own)
            out.append(FileKey(key, shard, renamed if renamed in own else None, pattern is not None))
    return out


def _conversions(model) -> list:
    """The conversions ``from_pretrained`` used for ``model`` (else the ones it would use)."""
    recorded = getattr(model, "_weight_conversions", None)
    if recorded is not None:
        return list(recorded)
    from transformers.conversion_mapping import get_model_conversion_mapping

    return list(get_model_conversion_mapping(model))


def file_named(targets: list, keys: list[FileKey]) -> list:
    """``targets`` (named by module path) renamed as the file names them: a layer whose weight is
    stored under ``encoder.layer.0.attention.attention.query.weight`` is
    ``encoder.layer.0.attention.attention.query``, as the log and ``verify`` name it; a layer whose
    weight is stored otherwise (split, fused, weight-normed) keeps its module path."""
    from dataclasses import replace

    stored = {fk.param: fk.key for fk in keys if fk.param is not None and not fk.converted}
    out = []
    for target in targets:
        key = stored.get(f"{target.module_path}.weight", "")
        out.append(replace(target, name=key[: -len(".weight")]) if key.endswith(".weight") else target)
    return out


def file_values(model, keys: list[FileKey], names: set[str]) -> tuple[dict, dict]:
    """The values ``save_pretrained`` would write for the fitted entries ``names`` of the model's
    state_dict: (``{file key: tensor}`` of renamed keys, each the parameter itself; ``{file key:
    tensor}`` of keys a converter split or fused, from transformers' ``revert_weight_conversion``
    of the whole model: a fused key mixes fitted and other tensors, so the writer takes those
    whose value changed)."""
    state = model.state_dict()
    renamed = {fk.key: state[fk.param] for fk in keys if fk.param in names and not fk.converted}
    converted = [fk for fk in keys if fk.converted and fk.param is not None]
    if not converted:
        return renamed, {}
    from transformers.core_model_loading import revert_weight_conversion

    reverted = revert_weight_conversion(model, dict(state))
    lost = [fk.key for fk in converted if fk.key not in reverted]
    if lost:
        raise ModelFormatError(f"transformers' reverse conversion of {type(model).__name__} does not give back the "
                               f"file's key(s) {first_few(lost)}; nothing was written")
    return renamed, {fk.key: reverted[fk.key] for fk in converted}


@contextlib.contextmanager
def offline():
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


def libraries(path: Path):
    try:
        import torch
        import transformers
    except ImportError:
        raise ModelFormatError("Hugging Face folders need transformers: pip install 'lsuv-convert[hf]'", path=path) from None
    transformers.utils.logging.disable_progress_bar()  # its bars would mix with the tool's own output
    return transformers, torch


@contextlib.contextmanager
def _quiet(transformers):
    """transformers' own load report (missing / unexpected keys) and config warnings are the
    tool's to tell, in its words."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def read_config(transformers, path: Path):
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"config.json is not valid JSON: {exc}", path=path) from None
    except RecursionError:
        raise ModelFormatError("config.json is nested too deeply to be read", path=path) from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ModelFormatError("config.json has no model_type: not a transformers model config", path=path)
    with offline(), _quiet(transformers):
        try:
            return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - unknown model_type, remote code required, ...
            raise ModelFormatError(f"transformers cannot read config.json (model_type {raw.get('model_type')!r}; "
                                   f"models that need remote code are not run): {first_line(exc)}", path=path) from None


def model_class(transformers, config, path: Path):
    """The class ``config.architectures`` names when transformers has it, else the AutoModel class
    for the config (what ``AutoModel.from_pretrained`` would build)."""
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(name), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    try:
        return transformers.AutoModel._model_mapping[type(config)]
    except (KeyError, ValueError, AttributeError):
        raise ModelFormatError(f"transformers has no model class for {type(config).__name__} "
                               "(models that need remote code are not run)", path=path) from None


def from_pretrained(path: Path, tensors: dict | None = None):
    """``cls.from_pretrained`` of the folder (``tensors``: the folder's tensors, read by the caller,
    given as its ``state_dict``); (model in eval mode, float32, loading info)."""
    transformers, torch = libraries(path)
    config = read_config(transformers, path)
    cls = model_class(transformers, config, path)
    where = None if tensors is not None else str(path)
    from ..shared.no_network import no_network

    with offline(), _quiet(transformers), no_network(f"transformers {cls.__name__}", path):
        try:
            model, info = cls.from_pretrained(where, config=config, state_dict=tensors, local_files_only=True,
                                              trust_remote_code=False, dtype=torch.float32, output_loading_info=True)
        except Exception as exc:  # noqa: BLE001 - size mismatches, converters that fail, ...
            raise ModelFormatError(f"transformers cannot load the folder into {cls.__name__}: {first_line(exc)}",
                                   path=path) from None
    model.eval()
    return model, info


def load_model(path: Path, shards: list) -> tuple[object, list[FileKey], list[str]]:
    """The folder's model loaded by transformers from the shards' tensors: (model, key map, notes).

    Tensors the model needs and the folder lacks are an error naming them (transformers would
    fill them with random values); tensors the model does not take are carried through unchanged."""
    import torch

    tensors = {key: t for shard in shards for key, t in shard.tensors.items() if isinstance(t, torch.Tensor)}
    model, info = from_pretrained(path, tensors)
    name = type(model).__name__
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelFormatError(f"the folder's weights do not match its config.json: {len(missing)} tensor(s) of {name} "
                               f"missing from the folder: {first_few(file_spelling(model, missing))}", path=path)
    mismatched = [str(m) for m in info.get("mismatched_keys") or []]
    if mismatched:
        raise ModelFormatError(f"{len(mismatched)} tensor(s) of the folder do not have the shape {name} gives them: "
                               f"{first_few(mismatched)}", path=path)
    keys = key_map(model, {shard.name: [k for k, t in shard.tensors.items() if isinstance(t, torch.Tensor)]
                           for shard in shards})
    notes = [f"architecture: transformers {name} loaded by from_pretrained from config.json and the folder's "
             "tensors (local files only, no remote code)"]
    return model, keys, notes + key_notes(keys) + stored_dtype_notes(list(tensors.values()))


def key_notes(keys: list[FileKey]) -> list[str]:
    """The log's notes about file keys transformers renames, fuses or splits on load."""
    notes = []
    renamed = [fk for fk in keys if fk.param is not None and fk.param != fk.key and not fk.converted]
    if renamed:
        notes.append(f"{len(renamed)} file key(s) renamed by transformers on load (e.g. {renamed[0].key} -> "
                     f"{renamed[0].param}); written back under the file's own keys")
    converted = [fk for fk in keys if fk.converted and fk.param is not None]
    if converted:
        notes.append(f"{len(converted)} file key(s) fused or split by transformers' converters on load (e.g. "
                     f"{converted[0].key} -> {converted[0].param}); written back through its reverse conversion")
    return notes


def file_spelling(model, names: list[str]) -> list[str]:
    """Model entries named as a file saved by ``save_pretrained`` names them, when transformers
    renames them (``layers.1.mlp.fc2.weight (file key encoder.layer.1.output.dense.weight)``)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return names
    state = model.state_dict()
    out = []
    for name in names:
        try:
            (spelled,) = revert_weight_conversion(model, {name: state[name]})
        except Exception:  # noqa: BLE001 - a converter needs its whole group: the model's name it is
            spelled = name
        out.append(name if spelled == name else f"{name} (file key {spelled})")
    return out


