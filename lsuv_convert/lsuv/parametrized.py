"""Targets whose weight is computed from stored tensors: weight norm in both of its forms (legacy
``torch.nn.utils.weight_norm``: ``weight_g`` / ``weight_v`` and a pre-forward hook;
``torch.nn.utils.parametrizations.weight_norm``: ``parametrizations.weight.original0`` / ``1``)
and any other ``torch.nn.utils.parametrize`` parametrization of ``weight``.

The engine fits ``module.weight`` in place. For such a layer that tensor is recomputed from its
sources at every call, so a fit written there is lost at the next forward. During the run
(:func:`effective_weights`) each one holds its effective weight as one fixed tensor that pre-init
and LSUV write to; afterwards its sources are set so that they compute exactly the fitted weight
(weight norm: ``v`` = W, ``g`` = ``||W||`` over every dim but ``dim``; a parametrization: its own
``right_inverse``), in place, so the parameters stay the same objects. A parametrization that
cannot represent a scaled weight (spectral norm divides any scale away) is no target
(:func:`without_unscalable`).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

_NAME = "weight"


def legacy_weight_norm(module: nn.Module):
    """(hook id, the ``WeightNorm`` hook) of a legacy weight-normed ``weight``, else None."""
    from torch.nn.utils.weight_norm import WeightNorm

    for key, hook in module._forward_pre_hooks.items():
        if isinstance(hook, WeightNorm) and hook.name == _NAME:
            return key, hook
    return None


def is_parametrized(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, _NAME)


def weight_sources(module: nn.Module) -> list[nn.Parameter]:
    """The stored tensors a computed weight comes from (empty for a plain weight)."""
    if is_parametrized(module):
        return list(module.parametrizations[_NAME].parameters())
    found = legacy_weight_norm(module)
    if found is not None:
        return [getattr(module, f"{_NAME}_g"), getattr(module, f"{_NAME}_v")]
    return []


def without_unscalable(targets: dict[str, nn.Module]) -> tuple[dict[str, nn.Module], list[str]]:
    """``targets`` less those whose parametrization cannot hold a scaled weight, with a note each:
    the weight scaled by 2, set through ``right_inverse`` on a copy, must come back scaled by 2.
    A layer with other parametrized tensors besides ``weight`` is left out too."""
    kept, notes = {}, []
    for name, module in targets.items():
        if not is_parametrized(module):
            kept[name] = module
            continue
        chain = module.parametrizations[_NAME]
        why = None
        if set(module.parametrizations.keys()) != {_NAME}:
            why = "other tensors of the layer are parametrized too"
        else:
            try:
                with torch.no_grad():
                    scaled = 2.0 * getattr(module, _NAME)
                    probe = copy.deepcopy(chain)
                    probe.right_inverse(scaled)
                    back = probe()
                if back.shape != scaled.shape or not torch.allclose(back, scaled, rtol=1e-4, atol=1e-6):
                    why = "it does not keep a scaled weight"
            except (RuntimeError, ValueError, NotImplementedError, TypeError) as exc:
                why = f"it cannot be set from a weight ({type(exc).__name__})"
        if why:
            kinds = ", ".join(type(p).__name__ for p in chain)
            notes.append(f"{name}: weight computed by the parametrization {kinds}, and {why}: left as it is")
            continue
        kept[name] = module
    return kept, notes


@contextlib.contextmanager
def effective_weights(targets: dict[str, nn.Module]):
    """Within: every computed target weight is a fixed tensor holding its effective value (a
    non-persistent buffer, so that moving the module to a device moves it too); on leaving: the
    weight's sources are set to compute it, and the layer computes its weight as before."""
    for m in targets.values():  # before anything is changed
        if legacy_weight_norm(m) is None and is_parametrized(m) and set(m.parametrizations.keys()) != {_NAME}:
            raise ValueError(f"target {type(m).__name__} has parametrized tensors besides its weight "
                             f"({', '.join(m.parametrizations.keys())}): leave it out of the targets")
    legacy, parametrized = {}, {}
    with torch.no_grad():
        for m in targets.values():
            found = legacy_weight_norm(m)
            if found is not None:
                key, hook = found
                legacy[m] = found
                weight = hook.compute_weight(m).detach().clone()
                m._forward_pre_hooks[key] = _no_hook  # same place in the hook order
                delattr(m, _NAME)
                m.register_buffer(_NAME, weight, persistent=False)
            elif is_parametrized(m):
                weight = getattr(m, _NAME).detach().clone()
                parametrized[m] = type(m)
                m.__class__ = type(m).__bases__[0]  # the class parametrize injected holds the property
                m.register_buffer(_NAME, weight, persistent=False)
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (key, hook) in legacy.items():
                fitted = m._buffers.pop(_NAME)
                getattr(m, f"{_NAME}_g").copy_(torch.norm_except_dim(fitted, 2, hook.dim))  # as weight_norm stores g
                getattr(m, f"{_NAME}_v").copy_(fitted)
                m._forward_pre_hooks[key] = hook
                setattr(m, _NAME, hook.compute_weight(m))
            for m, cls in parametrized.items():
                fitted = m._buffers.pop(_NAME)
                m.__class__ = cls
                m.parametrizations[_NAME].right_inverse(fitted)


def _no_hook(module, args):
    return None
