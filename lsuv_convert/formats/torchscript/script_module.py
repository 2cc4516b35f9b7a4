"""``lsuv_init`` on a ``torch.jit.ScriptModule`` (traced or scripted) from Python.

ScriptModules refuse forward hooks, so the module goes through the same reader as a
TorchScript file (:mod:`.read`): its inlined graph runs as an fx graph or the exact
interpreter, whose layers share their parameters with the ScriptModule. Inputs may be
given by position or by name (``kwargs``, or a dict batch), as forward declares them.
"""

from __future__ import annotations

from typing import Any

import torch

from ...lsuv.account import check_strict, rename_layer
from ..registry import get_format
from .read import graph_of, prepare_inputs, read_script, set_training
from .write import extra_params


def _positional(graph, batch: Any, kwargs: dict | None) -> list[torch.Tensor]:
    """The batch in forward's order: positional values first, then the named ones."""
    names = [spec.name for spec in graph.inputs]
    named = dict(kwargs or {})
    if isinstance(batch, dict):
        named.update(batch)
        positional = []
    elif isinstance(batch, torch.Tensor):
        positional = [batch]
    else:
        positional = list(batch)
    if len(positional) > len(names):
        raise TypeError(f"forward takes {len(names)} input(s) ({', '.join(names)}), got {len(positional)}")
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise TypeError(f"forward has no input named {', '.join(unknown)} (it takes {', '.join(names)})")
    values = positional + [named.get(n) for n in names[len(positional):]]
    missing = [n for n, v in zip(names, values) if v is None]
    if missing:
        raise TypeError(f"no value for input(s) {', '.join(missing)} of forward")
    return values


def lsuv_init_script(script_module, batch: Any, settings=None, *, kwargs=None, strict: bool = False, on_layer=None,
                     targets=None, walker=None, **options):
    """LSUV of a ScriptModule in place (its parameters); the report names layers as the file would."""
    if targets is not None or walker is not None:
        raise TypeError("targets / walker are chosen by the TorchScript reader for a ScriptModule")
    from ...lsuv.api import lsuv_init

    graph = graph_of(read_script(script_module, "<ScriptModule>"))
    state = graph.state
    try:
        inputs = _positional(graph, batch, kwargs)
        prepare_inputs(graph, inputs)
        by_path = graph.target_by_path()

        def renamed(report):
            if on_layer is not None:
                on_layer(report)

        report = lsuv_init(graph.module, tuple(inputs), targets=[t.module_path for t in graph.targets],
                           walker=graph.engine_path, on_layer=renamed, settings=settings, **options)
        _copy_back(graph)
    finally:
        set_training(script_module, state.training)
    report.account = get_format("torchscript").account(graph, report.layers)
    for layer in report.layers:
        layer.name = rename_layer(layer.name, lambda p: by_path[p].name if p in by_path else p)
    report.walker = f"torchscript ({report.walker})"
    if strict:
        check_strict(report.account)
    return report


@torch.no_grad()
def _copy_back(graph) -> None:
    """The ScriptModule's parameters get the new values (they already share storage on the CPU)."""
    state = graph.state
    params = dict(state.module.named_parameters())
    for key, (base, start, stop) in state.program.param_slices.items():
        params[key] = params[base][start:stop]
    for target in graph.targets:
        layer = graph.module.get_submodule(target.module_path)
        weight_path, bias_path = target.binding
        pairs = [(params[weight_path], layer.weight)]
        pairs += [(params[path], layer.get_parameter(attr)) for attr, path in extra_params(graph, target).items()] + ([(params[bias_path], layer.bias)] if bias_path else [])
        for dest, value in pairs:
            if dest.data_ptr() != value.data_ptr() or dest.device != value.device:
                dest.copy_(value.detach().to(dest.device, dest.dtype))
