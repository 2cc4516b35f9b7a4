"""A plain ``torch.nn.Module`` as the engine's graph: for formats that store weights but no code
(state_dict checkpoints, Hugging Face folders), whose architecture is built by Python code, and
for torch.export programs, whose graph module already computes the model (:func:`built_graph`).
Shared by those plug-ins, so it lives outside ``formats/`` (plug-ins import no other plug-in).

The engine walks the module's own forward with hooks; the target layers are the modules the
engine itself takes as targets. A target whose weight is also held by a module that is *not* a
target (an output projection tied to the input embedding) is left out: scaling it would change
a layer that already ran, which breaks LSUV's order. Statistics of a written model are measured
here too, with forward hooks on a freshly built module.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConversionError, DataError, LsuvError, first_line
from ..model_graph import InputSpec, ModelGraph, TargetLayer


def module_targets(model) -> tuple[list[str], list[str]]:
    """(target module paths in registration order, notes about targets left out)."""
    from ...lsuv.targets import find_targets, fittable_targets

    kept, notes = fittable_targets(model, find_targets(model))
    return list(kept), notes


def declared_inputs(model) -> list[InputSpec]:
    """The inputs of a module: a transformers model's main input (token ids: int64, below the
    vocabulary size; images; audio), read from its ``main_input_name`` and config, followed by the
    optional inputs a tokenizer or feature extractor also gives (:func:`_optional_inputs`); else one
    undeclared float input."""
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", None)
    if config is None or not isinstance(name, str):
        return [InputSpec("input", None)]
    if name == "input_ids":
        vocab = getattr(config, "vocab_size", None)
        main = InputSpec(name, (None, None), "int64", high=int(vocab) if vocab else None)
    elif name == "pixel_values":
        channels = getattr(config, "num_channels", 3)
        size = getattr(config, "image_size", None)
        size = size if isinstance(size, int) else None
        main = InputSpec(name, (None, channels, size, size))
    else:
        main = InputSpec(name, None)
    return [main, *_optional_inputs(model, name, config)]


def _optional_inputs(model, main: str, config) -> list[InputSpec]:
    """``attention_mask`` / ``token_type_ids`` where the forward takes them right after the main
    input, in its own order (the batch is passed positionally): fed when the data has them."""
    import inspect

    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []
    names = [p.name for p in params]
    if main not in names:
        return []
    specs = []
    for name in names[names.index(main) + 1:]:
        if name == "attention_mask":
            specs.append(InputSpec(name, None, "int64", high=2, optional=True))
        elif name == "token_type_ids":
            types = getattr(config, "type_vocab_size", None)
            specs.append(InputSpec(name, None, "int64", high=int(types) if types else None, optional=True))
        else:
            break
    return specs


def model_args(inputs: list, specs: list[InputSpec]) -> list:
    """The batch as the module takes it: integer inputs (token ids) as int64 even when the data
    path delivered them as floats, floating inputs in the module's float dtype."""
    import torch

    args = []
    for tensor, spec in zip(inputs, specs):
        if spec.dtype.startswith(("int", "uint")) and tensor.is_floating_point():
            if not bool(torch.equal(tensor, tensor.round())):
                raise DataError(f"input {spec.name!r} takes integer ids, but the batch holds fractional values")
            tensor = tensor.to(torch.int64)
        args.append(tensor)
    return args


def first_run_checked(model, args: list, source: Path) -> None:
    """The model's next forward pass (the LSUV pass) is the check that the batch fits: an error
    the model raises on it becomes one clear DataError. No probe runs before it: a model that keeps
    state between calls (a recurrent state in plain attributes) must run once, as ``lsuv_init``
    runs it, or its layers would be fitted to a state nobody starts from. The check is a wrapper
    around the instance's ``forward`` that removes itself after that one call."""
    shapes = ", ".join(str(tuple(a.shape)) for a in args)
    own = model.__dict__.get("forward")

    def forward(*a, **k):
        if own is None:
            model.__dict__.pop("forward", None)
        else:
            model.__dict__["forward"] = own
        try:
            return model.forward(*a, **k)
        except LsuvError:
            raise
        except Exception as exc:  # the model's own error on this batch
            if is_unmaterialized_use(model, exc):
                raise  # a streamed model read a tensor outside its module's call: the engine's to tell
            raise DataError(f"the model cannot run on the batch of shape {shapes}: {first_line(exc)[:300]}",
                            path=source) from None

    model.__dict__["forward"] = forward


def built_graph(format_name: str, loaded, module, inputs: list, check: bool, engine_path: str) -> ModelGraph:
    """A plug-in's ``build`` for a module that already computes the model: the batch as the module
    takes it (handed on as the graph's ``run_inputs``, so the engine runs on it); the LSUV pass,
    the model's one run, is checked (:func:`first_run_checked`)."""
    args = model_args(inputs, loaded.inputs)
    if check:
        first_run_checked(module, args, loaded.source)
    return ModelGraph(module=module, targets=list(loaded.targets), inputs=loaded.inputs, format=format_name,
                      source=loaded.source, state=loaded.state, notes=list(loaded.notes), engine_path=engine_path,
                      run_inputs=args)


def measure_module(model, args: list, targets: list[TargetLayer]) -> dict[str, tuple[float, float]]:
    """``{map name: (variance, mean)}`` of each target's first output, by forward hooks, in eval mode,
    named as the conversion log names the maps: a layer whose output packs q, k, v (GPT-2's Conv1D
    ``c_attn``) as ``NAME[q]``, ``NAME[k]``, ``NAME[v]``; a MultiheadAttention as its q, k and v
    (``F.linear`` on its own inputs and weight rows) and ``NAME.out_proj`` (the module's output)."""
    import torch

    from ...lsuv.attention import attention_inputs, projection_maps
    from ...lsuv.conv1d import conv1d_layout
    from ...lsuv.targets import is_attention, is_conv1d
    from ...lsuv.engine import part_name
    from ...lsuv.statistics import population_stats

    stats: dict[str, tuple[float, float]] = {}
    order: list[str] = []  # the maps of each target, for targets the batch never reached

    def keep(name, tensor):
        if name not in stats:
            stats[name] = population_stats(tensor)

    def hook_for(name, parts):
        def hook(module, inputs, output):
            if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                output = output[0]  # nn.MultiheadAttention: (out_proj's output, weights)
            if not isinstance(output, torch.Tensor):
                return
            if parts > 1:
                for i, piece in enumerate(output.split(output.shape[-1] // parts, dim=-1)):
                    keep(part_name(name, i, parts), piece)
            else:
                keep(name, output)

        return hook

    def attention_pre_hook(name, maps):
        def hook(module, args, kwargs):
            for (suffix, linear_map), x in zip(maps[:3], attention_inputs(module, args, kwargs)):
                keep(f"{name}.{suffix}", torch.nn.functional.linear(x, linear_map.weight, linear_map.bias))

        return hook

    handles = []
    model.eval()
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # fused kernels would skip the submodules' hooks
    try:
        for target in targets:
            layer = model.get_submodule(target.module_path)
            if is_attention(layer):
                maps = projection_maps(layer)
                order.extend(f"{target.name}.{suffix}" for suffix, _ in maps)
                handles.append(layer.register_forward_pre_hook(attention_pre_hook(target.name, maps), with_kwargs=True))
                handles.append(layer.register_forward_hook(hook_for(f"{target.name}.out_proj", 1)))
                continue
            parts = conv1d_layout(model, target.module_path, layer)["lsuv_parts"] if is_conv1d(layer) else 1
            order.extend([part_name(target.name, i, parts) for i in range(parts)] if parts > 1 else [target.name])
            handles.append(layer.register_forward_hook(hook_for(target.name, parts)))
        with torch.no_grad():
            model(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        for handle in handles:
            handle.remove()
    return {name: stats.get(name, (float("nan"), float("nan"))) for name in order}


def module_target_layers(model) -> tuple[list[TargetLayer], list[str]]:
    """Target layers named by module path, and notes about targets left out."""
    paths, notes = module_targets(model)
    return [TargetLayer(name=p, op=type(model.get_submodule(p)).__name__, module_path=p) for p in paths], notes


def fitted_state(graph: ModelGraph, out_path: Path) -> dict:
    """``{state_dict name: tensor}`` of every parameter the targets own (an attention target's
    out_proj too; a weight-normed or parametrized weight's stored sources: ``weight_g`` / ``weight_v``,
    ``parametrizations.weight.original0`` / ``1``), each under every name the state_dict gives it;
    a non-finite one refuses the write."""
    from ...lsuv.statistics import all_finite

    model = graph.module
    names_of: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        names_of.setdefault(id(tensor), []).append(key)
    out = {}
    for target in graph.targets:
        layer = model.get_submodule(target.module_path)
        for param in layer.parameters():
            if not all_finite(param):
                raise ConversionError(f"layer {target.name} has non-finite weights; nothing was written", path=out_path)
            for key in names_of.get(id(param), []):
                out[key] = param.detach()
    return out


def copy_into(dest: dict, values: dict) -> list[str]:
    """Copy ``values`` (by key) into the file's tensors ``dest``, in place and in the file's dtype
    (so storage shared between entries stays shared); keys the file does not store are passed
    over (a tied name). Returns the keys written."""
    import torch

    written = []
    with torch.no_grad():
        for key, value in values.items():
            tensor = dest.get(key)
            if tensor is None:
                continue
            tensor.copy_(value.to(tensor.device, tensor.dtype))
            written.append(key)
    return written


def copy_targets_into(graph: ModelGraph, tensors: dict, file_key, out_path: Path) -> list[str]:
    """Copy every target's own parameters (:func:`fitted_state`) into ``tensors`` (the file's, by
    key); ``file_key`` maps the module's key to the file's. Returns the keys written."""
    return copy_into(tensors, {file_key(key): value for key, value in fitted_state(graph, out_path).items()})


def stored_dtype_notes(values: list) -> list[str]:
    """The log's note about weights stored in another float dtype than float32 (the model runs in
    float32; the writers convert back)."""
    import torch

    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in values
                     if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32})
    return [f"weights stored as {', '.join(dtypes)}: LSUV runs in float32, values are written back as stored"] if dtypes else []


def is_unmaterialized_use(model, exc: Exception) -> bool:
    """Whether ``exc`` is a streamed model (placeholders on the meta device) computing with a
    placeholder: code that reads a module's tensors without calling that module."""
    return isinstance(exc, (RuntimeError, NotImplementedError)) and "meta" in str(exc) and any(
        p.device.type == "meta" for p in model.parameters())
