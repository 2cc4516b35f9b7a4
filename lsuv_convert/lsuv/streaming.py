"""Streaming LSUV: memory that grows with the largest layer, not with the model.

LSUV is layer-sequential: when layer k is fitted only its weights and the live activations
matter. A streaming run takes a model whose parameters are on the ``meta`` device (built
without allocating them, e.g. under accelerate's ``init_empty_weights``) and, during the one
forward pass of :func:`~lsuv_convert.lsuv.engine.lsuv_walk`, per module:

1. right before the module runs, its tensors are *materialized* on the run's device: a
   target's weight drawn by the pre-init there (nothing read), its bias zeroed; everything
   else read from a :class:`TensorSource` (``pre_init="keep"`` reads the target too);
2. the engine fits it (targets only) and hands its output on;
3. right after, a target's tensors are written to a :class:`TensorSink`, and the module's
   tensors are freed (the meta placeholders go back in place).

A tensor that several modules hold (tied weights, a layer registered under two names) stays
until the end of the pass, its last possible use. A module called again (a shared layer
called in a loop) gets its tensors materialized again: a fitted one read back from the sink,
any other from the source, so it computes with the same values. Tensors of targets the batch
never reaches are drawn and written at the end, as a run that pre-initializes everything
first would leave them. Tensors the engine never writes (everything but the targets') are
the sink's to copy from the source unchanged.

The pre-init draws each unit from its own seeded generator (:class:`.orthonormal.UnitSeeds`),
so the values equal those of a run that loads the whole model, with the same seed.
Nothing here knows about files: sources and sinks are given by the caller (the file formats).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..errors import ConversionError
from .attention import projection_maps
from .targets import is_attention
from .orthonormal import UnitSeeds, pre_initialize_unit
from .statistics import all_finite


class StreamingError(ConversionError):
    """The model can't run streaming: its code computes with a module's tensors without calling
    that module (so nothing materializes them). The caller may run it whole instead."""


class TensorSource(Protocol):
    """The stored value of each model entry, one tensor at a time."""

    def __contains__(self, name: str) -> bool:
        """Whether the model's state_dict entry ``name`` is stored."""

    def read(self, name: str) -> torch.Tensor:
        """The value of the model's state_dict entry ``name`` (any device, any dtype)."""


class TensorSink(Protocol):
    """Where the fitted tensors go, one at a time; it can give back what it was given."""

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Store the final value of the model's state_dict entry ``name`` (a tied tensor comes once
        under each of its names; a name the sink does not store is passed over)."""

    def read_back(self, name: str) -> torch.Tensor:
        """The value written for ``name`` (a module called again computes with it)."""


@dataclass
class _Entry:
    """One parameter or persistent buffer of the model, under every name and owner it has."""

    name: str  # its first state_dict name the source stores (else its first): what source and sink are asked for
    owners: list[tuple[nn.Module, str, bool]]  # (module, attribute, is a parameter)
    placeholder: torch.Tensor  # the meta parameter (or constructed buffer) put back when freed
    stored: bool  # in the state_dict (read from the source); else a non-persistent buffer
    fitted: bool = False  # belongs to a target: its value is the engine's to write
    pinned: bool = False  # held by several modules: kept until the end of the pass
    live: torch.Tensor | None = None
    initialized: bool = False  # drawn by the pre-init (or read, with keep) at least once
    written: bool = False
    aliases: list[str] = field(default_factory=list)  # every state_dict name it has: each is written


@dataclass
class _Target:
    name: str
    module: nn.Module
    first_unit: int  # index of its first pre-init unit (UnitSeeds)
    entries: list[_Entry] = field(default_factory=list)


class Materializer:
    """The per-module materialize / write / free protocol of one streaming pass."""

    def __init__(self, module: nn.Module, targets: dict[str, nn.Module], source: TensorSource, sink: TensorSink,
                 device: torch.device, pre_init: str, seeds: UnitSeeds):
        self.source, self.sink, self.device = source, sink, device
        self.pre_init, self.seeds = pre_init, seeds
        self.entries: dict[int, _Entry] = {}  # id(placeholder) -> entry
        self.by_module: dict[nn.Module, list[_Entry]] = {}
        self.live_ids: dict[int, str] = {}  # id(live tensor) -> entry name: the engine's identity of a weight
        self.pre_init_seconds = 0.0
        names: dict[int, str] = {}
        aliases: dict[int, list[str]] = {}
        for n, t in module.state_dict(keep_vars=True).items():  # a tied tensor: the first name stored
            aliases.setdefault(id(t), []).append(n)
            if id(t) not in names or (n in source and names[id(t)] not in source):
                names[id(t)] = n
        paths: dict[int, set[str]] = {}
        for path, owner in module.named_modules(remove_duplicate=False):
            direct = [(a, t, True) for a, t in owner._parameters.items() if t is not None]
            direct += [(a, t, False) for a, t in owner._buffers.items() if t is not None]
            for attr, tensor, is_param in direct:
                entry = self.entries.get(id(tensor))
                if entry is None:
                    qualified = f"{path}.{attr}" if path else attr
                    name = names.get(id(tensor), qualified)
                    entry = self.entries[id(tensor)] = _Entry(name, [], tensor, name in source,
                                                              aliases=aliases.get(id(tensor), [name]))
                if (owner, attr, is_param) not in entry.owners:
                    entry.owners.append((owner, attr, is_param))
                paths.setdefault(id(tensor), set()).add(path)
                if entry not in self.by_module.setdefault(owner, []):
                    self.by_module[owner].append(entry)
        for key, entry in self.entries.items():
            entry.pinned = len(paths[key]) > 1
        self.targets: dict[nn.Module, _Target] = {}
        unit = 0
        for name, target in targets.items():
            record = _Target(name, target, unit)
            unit += len(projection_maps(target)) if is_attention(target) else 1
            for sub in target.modules():  # an attention's out_proj is never called: it comes with it
                for entry in self.by_module.get(sub, []):
                    entry.fitted = True
                    if entry not in record.entries:
                        record.entries.append(entry)
            self.targets[target] = record

    # ---- the engine's view ---------------------------------------------------------------------
    def identity(self, tensor: torch.Tensor):
        """A weight's identity across its materializations (its entry's name)."""
        return self.live_ids.get(id(tensor), id(tensor))

    def register(self) -> list:
        """Pre-hooks (first of all) that materialize, post-hooks that write and free."""
        handles = []
        for module in set(self.by_module) | set(self.targets):
            handles.append(module.register_forward_pre_hook(self._before, prepend=True))
            handles.append(module.register_forward_hook(self._after))
        return handles

    # ---- hooks -----------------------------------------------------------------------------------
    def _before(self, module, args):
        target = self.targets.get(module)
        if target is not None:
            self._materialize_target(target)
        for entry in self.by_module.get(module, []):
            self._materialize(entry)

    def _after(self, module, args, output):
        target = self.targets.get(module)
        if target is not None:
            for entry in target.entries:
                if not entry.pinned:
                    self._write(entry)
        freed = 0
        for entry in (target.entries if target is not None else []) + self.by_module.get(module, []):
            if not entry.pinned:
                freed += self._free(entry)
        if freed >= _TRIM_BYTES:
            _return_free_memory()

    # ---- the protocol ----------------------------------------------------------------------------
    @torch.no_grad()
    def _materialize(self, entry: _Entry, draw: bool = False) -> None:
        if entry.live is not None:
            return
        like = entry.placeholder
        if entry.written:
            value = self.sink.read_back(entry.name)
        elif draw:  # the pre-init fills it: nothing to read
            value = torch.empty(like.shape, dtype=like.dtype, device=self.device)
        elif entry.stored:
            value = self.source.read(entry.name)
            if tuple(value.shape) != tuple(like.shape):
                raise ConversionError(f"{entry.name} has shape {tuple(value.shape)} in the file, "
                                      f"{tuple(like.shape)} in the model")
        elif like.device.type != "meta":  # a buffer the constructor computed (rotary frequencies, position ids)
            value = like
        else:
            raise ConversionError(f"{entry.name} is neither stored nor computed by the model's constructor")
        value = value.to(device=self.device, dtype=like.dtype if like.is_floating_point() else value.dtype)
        entry.live = value
        self._install(entry, value)

    def _install(self, entry: _Entry, value: torch.Tensor) -> None:
        tensor = value
        for owner, attr, is_param in entry.owners:
            if is_param:
                if not isinstance(tensor, nn.Parameter):
                    tensor = nn.Parameter(value, requires_grad=False)
                    entry.live = tensor
                owner._parameters[attr] = tensor
            else:
                owner._buffers[attr] = value
        self.live_ids[id(entry.live)] = entry.name

    def _materialize_target(self, target: _Target) -> None:
        """A target's tensors in place; drawn by the pre-init on their first materialization."""
        fresh = [e for e in target.entries if e.live is None and not e.written and not e.initialized]
        draw = self.pre_init != "keep" and len(fresh) == len(target.entries)
        for entry in target.entries:
            self._materialize(entry, draw=draw and entry in fresh)
        if draw:
            start = time.perf_counter()
            units = projection_maps(target.module) if is_attention(target.module) else [("", target.module)]
            for offset, (_, unit) in enumerate(units):
                pre_initialize_unit(unit, self.pre_init, self.seeds.generator(target.first_unit + offset))
            self.pre_init_seconds += time.perf_counter() - start
        for entry in target.entries:
            entry.initialized = True

    def _write(self, entry: _Entry) -> None:
        if entry.written or entry.live is None or not entry.stored:
            return
        if not all_finite(entry.live):
            raise ConversionError(f"{entry.name} has non-finite values; nothing was written")
        for name in entry.aliases:
            self.sink.write(name, entry.live.detach())
        entry.written = True

    def _free(self, entry: _Entry) -> int:
        """Put the placeholder back; returns the bytes let go."""
        if entry.live is None:
            return 0
        size = entry.live.numel() * entry.live.element_size() if entry.live.device.type == "cpu" else 0
        self.live_ids.pop(id(entry.live), None)
        entry.live = None
        for owner, attr, is_param in entry.owners:
            (owner._parameters if is_param else owner._buffers)[attr] = entry.placeholder
        return size

    def finish(self) -> None:
        """Targets never reached drawn (or read) and written, tensors kept till the end written
        (a target's) and freed."""
        for target in self.targets.values():
            if all(e.written or not e.stored for e in target.entries):
                continue
            self._materialize_target(target)
            for entry in target.entries:
                self._write(entry)
            for entry in target.entries:
                if not entry.pinned:
                    self._free(entry)
        for entry in self.entries.values():
            if entry.fitted:
                self._write(entry)
            self._free(entry)


_TRIM_BYTES = 1 << 20


def _return_free_memory() -> None:
    """Hand the C allocator's freed heap memory back to the system (glibc's ``malloc_trim``).

    Weights of a few MB are allocated on glibc's heap once its adaptive threshold for mapping
    large blocks has risen; freed, they stay in the process and its resident size grows layer
    after layer, although nothing is live. Measured on a 16-layer Llama-style model: ~40 MB
    less peak. Elsewhere (no glibc) nothing is done."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def is_streamable(module: nn.Module) -> str | None:
    """Why ``module`` can't run streaming (None: it can): every parameter must be a placeholder on
    the meta device, and no weight may be computed by a parametrization or a weight-norm hook (its
    stored tensors are not the weight the engine fits)."""
    for name, param in module.named_parameters():
        if param.device.type != "meta":
            return f"parameter {name} is not on the meta device (the model was built with its weights)"
    for name, sub in module.named_modules():
        if getattr(sub, "parametrizations", None) is not None or any(
                type(h).__name__ == "WeightNorm" for h in sub._forward_pre_hooks.values()):
            return f"{name or 'the model'} computes a weight from others (weight norm or a parametrization)"
    return None


class PlaceholderGuard:
    """During a streaming pass: any torch op that mixes a placeholder (a meta tensor) with real
    tensors raises :class:`StreamingError`. Some ops would not fail by themselves: ``F.linear`` of
    a real input and a meta weight returns an uninitialised real tensor, which the fit would take
    for the layer's output. That happens when code computes with a module's tensors without
    calling the module, so nothing materialized them."""

    def __enter__(self):
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_flatten

        class _Guard(TorchFunctionMode):
            # At the level of torch functions (F.linear, matmul, ...), before any decomposition:
            # a dispatch mode would see composite ops decomposed and change their rounding.
            def __torch_function__(self, func, types, args=(), kwargs=None):
                devices = {t.device.type for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
                if "meta" in devices and len(devices) > 1:
                    raise StreamingError(f"the model computes with a module's tensors outside that module's call "
                                         f"({getattr(func, '__name__', func)}), which streaming can't follow; "
                                         "run it whole")
                return func(*args, **(kwargs or {}))

        self._mode = _Guard()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
