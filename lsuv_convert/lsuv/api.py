"""Python API: ``lsuv_init(module, batch)`` for any ``nn.Module``."""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .account import check_strict, module_account
from .attention import attention_hooks, projection_maps
from .conv1d import layouts
from .engine import LsuvReport, lsuv_walk
from .settings import DEFAULTS, LsuvSettings
from .orthonormal import pre_initialize, unit_seeds
from .parametrized import effective_weights
from .targets import find_targets, fittable_targets, is_attention


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": CUDA when available, else CPU. Raises ValueError for unusable devices."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r} (use auto, cpu or cuda[:N])") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r} (use auto, cpu or cuda[:N])")
    return dev


def _as_args(batch: Any, kwargs: dict | None) -> tuple[tuple, dict]:
    """Positional and keyword inputs: a tensor, a tuple/list (positional) or a dict (by name)."""
    kwargs = dict(kwargs or {})
    if isinstance(batch, torch.Tensor):
        return (batch,), kwargs
    if isinstance(batch, (tuple, list)):
        return tuple(batch), kwargs
    if isinstance(batch, dict):
        overlap = set(batch) & set(kwargs)
        if overlap:
            raise TypeError(f"input(s) {', '.join(sorted(overlap))} given both in batch and in kwargs")
        return (), {**batch, **kwargs}
    raise TypeError(f"batch must be a tensor, a tuple of tensors or a dict of named tensors, got {type(batch).__name__}")


def _to_device(value: Any, dev: torch.device, dtype: torch.dtype | None):
    """Float tensors take the model's float dtype; integer / bool tensors keep theirs."""
    if isinstance(value, torch.Tensor):
        return value.to(dev, dtype=dtype if (dtype is not None and value.is_floating_point()) else value.dtype)
    return value


def _module_device(module: nn.Module) -> torch.device:
    for t in itertools.chain(module.parameters(), module.buffers()):  # the first one: no list of all
        return t.device
    return torch.device("cpu")


def _needs_move(modules: Sequence[nn.Module], device: torch.device) -> bool:
    """Whether any parameter or buffer of ``modules`` is elsewhere (``Module.to`` walks
    everything even if not). The modules' own tensors are read directly: ``parameters()`` and
    ``buffers()`` would each walk the tree again and build a set of everything seen."""
    devices = set()
    for m in modules:
        for t in m._parameters.values():
            if t is not None:
                devices.add(t.device)
        for t in m._buffers.values():
            if t is not None:
                devices.add(t.device)
    return any(d.type != device.type or (device.index is not None and d.index != device.index) for d in devices)


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


@contextlib.contextmanager
def _eval_mode(module: nn.Module, modules: Sequence[nn.Module]):
    """Inference mode for the walk, each of ``modules``' own mode back afterwards (nothing to
    do for a module already in eval mode, the usual case)."""
    modes = [(m, m.training) for m in modules]
    changed = any(mode for _, mode in modes)
    if changed:
        module.eval()
    try:
        yield
    finally:
        if changed:
            for m, mode in modes:
                m.training = mode


def _pre_init_units(targets: dict[str, nn.Module]) -> list:
    """What the pre-init fills: each target, and each projection of an attention separately."""
    units = []
    for m in targets.values():
        units.extend([lm for _, lm in projection_maps(m)] if is_attention(m) else [m])
    return units


def _is_graph_module(module: nn.Module) -> bool:
    import torch.fx

    return isinstance(module, torch.fx.GraphModule)


def lsuv_init(
    module: nn.Module,
    batch: Any,
    settings: LsuvSettings | None = None,
    *,
    device: str | torch.device | None = None,
    targets: Sequence[str] | None = None,
    walker: str = "auto",
    on_layer: Callable | None = None,
    kwargs: dict | None = None,
    strict: bool = False,
    source=None,
    sink=None,
    **knobs,
) -> LsuvReport:
    """Orthonormal pre-init + LSUV of ``module`` in place, using ``batch``.

    How LSUV runs is ``settings`` (:class:`~lsuv_convert.lsuv.settings.LsuvSettings`: pre_init,
    tol, max_iter, target_var, center, seed), or the same knobs given one by one as keywords
    (``lsuv_init(model, x, tol=0.01, seed=0)``); not both. Unset knobs take :data:`DEFAULTS`.

    ``batch`` is what the module's forward takes: a tensor, a tuple of tensors (positional) or
    a dict of tensors (keyword inputs, e.g. ``{"input_ids": ids, "attention_mask": mask}``);
    ``kwargs`` adds keyword inputs to a positional batch. Integer and bool tensors (token ids,
    masks) are passed as they are; float tensors take the module's float dtype.
    A ``torch.jit.ScriptModule`` takes :func:`lsuv_convert.lsuv_init`, which reads its graph.

    ``device=None`` runs on CUDA when available; the module is returned to its original
    device. ``walker`` is "fx" (walk a torch.fx GraphModule: the module, or its trace),
    "hooks" (walk the module's own forward) or "auto" (fx for a GraphModule, else hooks);
    all give the same weights, in one forward pass.
    ``seed=None`` draws from torch's global generator.
    Without ``targets``, a layer whose weight is tied to a module that is not a layer (a language
    model's output projection sharing the input embedding) is left out, with a note in
    ``report.notes``: scaling it would rescale the embedding, which runs first.
    The report's ``account`` says, for every parameter tensor, whether it was initialized,
    unreached (its layer never ran on the batch) or skipped (with the reason); ``strict=True``
    raises :class:`~lsuv_convert.lsuv.account.IncompleteError` when a conv / linear / attention
    weight is unreached or skipped (the weights are changed all the same).

    Streaming (``source`` and ``sink`` given, see :mod:`.streaming`): ``module``'s parameters are
    placeholders on the meta device; each module's tensors are materialized on ``device`` right
    before it runs (read from ``source``; a target's weight drawn by the pre-init), a target's are
    written to ``sink`` after its fit, and all are freed, so memory holds about one layer and
    the activations. The module is left with its placeholders; the values equal those of a
    run on the whole model with the same seed.
    """
    if _is_script_module(module):
        raise TypeError("a torch.jit.ScriptModule refuses hooks: use lsuv_convert.lsuv_init, which runs it "
                        "through the TorchScript reader")
    if settings is None:
        settings = replace(DEFAULTS, **knobs)  # an unknown knob is a TypeError naming it
    elif knobs:
        raise TypeError(f"give either settings or individual knobs, not both (got {', '.join(sorted(knobs))})")
    settings.validate()
    dev = resolve_device(device)
    report = LsuvReport(settings=settings, device=str(dev))
    home = _module_device(module)
    named = list(module.named_modules())  # one walk of the module tree for every scan below
    target_map = find_targets(module, targets, named)
    if targets is None:
        target_map, report.notes = fittable_targets(module, target_map)

    if source is not None:
        from .streaming import is_streamable

        why = is_streamable(module)
        if why is not None:
            raise ValueError(f"cannot stream this module: {why}")
        with layouts(module, target_map):
            report.layers, report.seconds = _walk_streaming(module, batch, kwargs, target_map, settings, dev, named,
                                                            source, sink, on_layer)
        report.walker = "streaming"
        report.account = module_account(module, target_map, report.layers, named=named)
        if strict:
            check_strict(report.account)
        return report

    # Conv1D's (in, out) weight and packed q / k / v; weight-normed and parametrized weights as
    # the fixed tensors they compute, their stored sources set from the fit afterwards
    with layouts(module, target_map), effective_weights(target_map):
        t0 = time.perf_counter()
        pre_initialize(_pre_init_units(target_map), settings.pre_init, unit_seeds(settings.seed))
        report.seconds["pre_init"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        moved = _needs_move([m for _, m in named], dev)
        if moved:
            module.to(dev)
        dtype = _float_dtype(module)
        args, kw = _as_args(batch, kwargs)
        args = tuple(_to_device(a, dev, dtype) for a in args)
        kw = {k: _to_device(v, dev, dtype) for k, v in kw.items()}
        try:
            with _eval_mode(module, [m for _, m in named]):
                report.walker, runner = _choose_walker(module, walker)
                targets_in_runner = target_map if runner is module else {n: runner.get_submodule(n) for n in target_map}
                report.layers = lsuv_walk(runner, args, targets_in_runner, settings, on_layer, kw, attention_hooks)
        finally:
            if moved:
                module.to(home)
        report.seconds["lsuv"] = time.perf_counter() - t0
    report.account = module_account(module, target_map, report.layers, named=named)
    if strict:
        check_strict(report.account)
    return report


def _walk_streaming(module, batch, kwargs, target_map, settings, dev, named, source, sink, on_layer):
    """The LSUV walk of a module on the meta device, materializing each module as it runs."""
    from .streaming import Materializer, PlaceholderGuard, StreamingError

    t0 = time.perf_counter()
    materializer = Materializer(module, target_map, source, sink, dev, settings.pre_init, unit_seeds(settings.seed))
    dtype = _float_dtype(module)
    args, kw = _as_args(batch, kwargs)
    args = tuple(_to_device(a, dev, dtype) for a in args)
    kw = {k: _to_device(v, dev, dtype) for k, v in kw.items()}
    with _eval_mode(module, [m for _, m in named]):
        try:
            with PlaceholderGuard():
                layers = lsuv_walk(module, args, target_map, settings, on_layer, kw, attention_hooks,
                                   streaming=materializer)
        except (RuntimeError, NotImplementedError) as exc:
            if "meta" not in str(exc):
                raise
            raise StreamingError("the model computes with a module's tensors outside that module's call, which "
                                 f"streaming can't follow ({str(exc).splitlines()[0][:200]}); run it whole") from None
    materializer.finish()
    # the pre-init runs inside the pass, layer by layer: its time is told apart, as in a whole run
    total = time.perf_counter() - t0
    return layers, {"pre_init": materializer.pre_init_seconds, "lsuv": total - materializer.pre_init_seconds}


def _is_script_module(module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def _choose_walker(module: nn.Module, walker: str) -> tuple[str, nn.Module]:
    """The module whose forward pass the engine walks, and the walker's name.

    "fx" walks a ``torch.fx.GraphModule`` (the module itself, or its symbolic trace sharing
    its parameters); "hooks" walks the module's own forward. Both visit the layers in
    execution order and give the same weights; "auto" takes a GraphModule as it is and does
    not trace anything else, because tracing adds cost and no information.
    """
    if walker not in ("auto", "fx", "hooks"):
        raise ValueError(f"walker must be auto, fx or hooks, got {walker!r}")
    if _is_graph_module(module) and walker != "hooks":
        return "fx", module
    if walker in ("auto", "hooks"):
        return "hooks", module
    import torch.fx

    return "fx", torch.fx.symbolic_trace(module)
