"""A Hugging Face folder streamed layer by layer (the default; ``--no-stream`` loads it whole).

The model is built from ``config.json`` without allocating its parameters: accelerate's
``init_empty_weights`` puts every parameter on torch's meta device and leaves buffers as the
constructor computed them. That is why it is used rather than a bare ``torch.device("meta")``
context, which would also turn the buffers a model computes and never stores (rotary
frequencies, position ids) into placeholders with no value to read. Each parameter's place in
the folder is transformers' own key map (:func:`.loading.key_map`, the one the whole-model load
uses), read from the shards' headers alone; the engine then reads each tensor when its module
runs and the fitted ones are written into the output's shards, in the source's layout
(:class:`..shared.safetensors_io.SafetensorsStream`).

A folder that can't be streamed is loaded whole, with a note saying why: weights in
``pytorch_model.bin`` files (a torch.save archive is unpickled whole), tensors transformers splits
or fuses on load (a converter needs its whole group), weight norm or parametrizations (their
stored tensors are not the weight that is fitted), a folder lacking a tensor the model needs or
holding one of another shape (the whole-model load names them in its error).
"""

from __future__ import annotations

from pathlib import Path

from .folder import Shard, staged_folder, weight_files
from .loading import key_map, libraries, model_class, offline, read_config


def streamed_model(path: Path):
    """(empty model, key map, shards of meta tensors, SafetensorsStream), or the reason it can't stream."""
    names, _ = weight_files(path)
    if not all(name.endswith(".safetensors") for name in names):
        return "its weights are torch.save files (pytorch_model.bin), which are read whole"
    try:
        from accelerate import init_empty_weights
    except ImportError:
        return "accelerate is not installed (pip install 'lsuv-convert[hf]')"
    from ...lsuv.streaming import is_streamable
    from ..shared.safetensors_io import DTYPES, SafetensorsStream, read_header

    transformers, torch = libraries(path)
    config = read_config(transformers, path)
    cls = model_class(transformers, config, path)
    with offline():
        try:
            with init_empty_weights():
                model = cls._from_config(config, dtype=torch.float32)
            model.tie_weights()  # the context re-creates a parameter assigned to a second module
        except Exception as exc:  # noqa: BLE001 - the whole-model load reports it in its words
            return f"transformers cannot build {cls.__name__} without its weights ({type(exc).__name__})"
    model.eval()
    if getattr(model.config, "use_cache", None):  # no key / value cache of every layer kept through the pass
        model.config.use_cache = False
    why = is_streamable(model)
    if why is not None:
        return why
    shards = []
    for name in names:
        header, _ = read_header(path / name)
        metadata = header.pop("__metadata__", None) or {}
        tensors = {key: torch.empty(entry["shape"], dtype=getattr(torch, DTYPES.get(entry["dtype"], "uint8")),
                                    device="meta") for key, entry in header.items()}
        shards.append(Shard(name, tensors, dict(metadata)))
    keys = key_map(model, {shard.name: list(shard.tensors) for shard in shards})
    if any(fk.converted for fk in keys):
        return f"transformers splits or fuses some tensors of {cls.__name__} on load"
    own = model.state_dict(keep_vars=True)
    stored_as = {shard.name: shard.tensors for shard in shards}
    where: dict[str, list[tuple[str, str]]] = {}
    for fk in keys:
        if fk.param is None:
            continue
        if tuple(stored_as[fk.shard][fk.key].shape) != tuple(own[fk.param].shape):
            return f"{fk.key} has another shape in the folder than in {cls.__name__}"
        where.setdefault(fk.param, []).append((fk.shard, fk.key))
    stored_ids = {id(own[name]) for name in where}
    if any(isinstance(t, torch.nn.Parameter) and id(t) not in stored_ids for t in own.values()):
        return f"the folder lacks tensors {cls.__name__} needs"
    stream = SafetensorsStream({name: path / name for name in names}, where,
                               lambda out: staged_folder(path, out, names))
    return model, keys, shards, stream
