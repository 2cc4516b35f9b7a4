"""Write the loaded ScriptModule back with its new weights: same code, structure, buffers, extra files.

The engine has scaled the parameters in place (the target layers share storage with the
ScriptModule); they are copied again here in case the engine worked on another device.
Training flags are restored to what the file had, and ``torch.jit.save`` writes through
an atomic temporary file, so a failure leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...atomic import atomic_path
from ...errors import ConversionError, OutputError
from ..model_graph import ModelGraph
from ...lsuv.statistics import all_finite
from .read import ScriptState, set_training
from .quiet import jit_deprecation_silenced


def save_script(graph: ModelGraph, out_path: Path) -> None:
    state: ScriptState = graph.state
    module = state.module
    params = dict(module.named_parameters())
    for key, (base, start, stop) in state.program.param_slices.items():  # rows of a packed weight
        params[key] = params[base][start:stop]
    updates = []  # (ScriptModule parameter, new value)
    for target in graph.targets:
        layer = graph.module.get_submodule(target.module_path)
        weight_path, bias_path = target.binding
        pairs = [(params[weight_path], layer.weight)]
        pairs += [(params[path], layer.get_parameter(attr)) for attr, path in extra_params(graph, target).items()]
        if bias_path is not None:
            pairs.append((params[bias_path], layer.bias))
        if not all(all_finite(value) for _, value in pairs):
            raise ConversionError(f"layer {target.name} has non-finite weights; nothing was written", path=out_path)
        updates += pairs
    with torch.no_grad():
        for dest, value in updates:
            if dest.data_ptr() != value.data_ptr() or dest.device != value.device:
                dest.copy_(value.detach().to(dest.device, dest.dtype))
    set_training(module, state.training)  # as the file had them
    try:
        with atomic_path(out_path) as tmp:
            try:
                with jit_deprecation_silenced():
                    torch.jit.save(module, str(tmp), _extra_files=state.extra_files)
            except RuntimeError as exc:
                raise OutputError(f"torch.jit.save failed: {str(exc).splitlines()[0]}", path=out_path) from None
    finally:
        set_training(module, {name: False for name in state.training})


def extra_params(graph, target) -> dict[str, str]:
    """Parameters a target holds besides weight and bias (an attention's out_proj): attribute -> path."""
    calls = graph.state.program.layers.get(target.module_path, [])
    return dict(calls[0].extra_params) if calls else {}
