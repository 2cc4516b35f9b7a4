"""What LSUV takes as a target layer: the one place that decides.

A target is a conv / deconv / linear layer (or a module that opts in with ``lsuv_target``), a
transformers-style ``Conv1D`` (a linear layer with an (in, out) weight), or a multi-head
attention (whose q / k / v / out maps it fits itself). :func:`find_targets` lists them in a
module, :func:`without_tied_targets` leaves out those whose weight a non-target also holds,
:func:`fittable_targets` also those whose weight a parametrization computes in a way that cannot
hold a scaled weight (:mod:`.parametrized`).
Every format plug-in and the API ask here; none decides on its own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .engine import declared

TARGET_TYPES: tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)


def is_layer(module: nn.Module) -> bool:
    """Conv / deconv / linear layers, or any module that opts in with ``lsuv_target = True``."""
    if isinstance(module, TARGET_TYPES) and isinstance(getattr(module, "weight", None), torch.Tensor):
        return True
    return bool(declared(module, "lsuv_target"))


def is_conv1d(module: nn.Module) -> bool:
    """A transformers-style Conv1D: class named ``Conv1D`` with ``nf`` outputs and an (in, nf) weight."""
    if type(module).__name__ != "Conv1D":  # first: any other module would pay Module.__getattr__'s raise
        return False
    weight = getattr(module, "weight", None)
    return (isinstance(getattr(module, "nf", None), int)
            and isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.shape[1] == module.nf)


def is_attention(module: nn.Module) -> bool:
    """nn.MultiheadAttention, or a module shaped like it that opts in (``lsuv_attention``)."""
    return isinstance(module, nn.MultiheadAttention) or bool(declared(module, "lsuv_attention"))


def is_target(module: nn.Module) -> bool:
    """Whether LSUV fits ``module``: a conv / linear layer, a Conv1D or an attention."""
    return is_layer(module) or is_conv1d(module) or is_attention(module)


def find_targets(module: nn.Module, names: Sequence[str] | None = None,
                 named: Sequence[tuple[str, nn.Module]] | None = None) -> dict[str, nn.Module]:
    """Target submodules by qualified name: ``names`` if given, else every conv / linear (transformers'
    Conv1D included) and every MultiheadAttention (whose ``out_proj`` it fits itself: that Linear is
    never called). ``named``: ``module.named_modules()`` when the caller has listed it already."""
    if names is not None:
        return {n: module.get_submodule(n) for n in names}
    found = {n: m for n, m in (named if named is not None else module.named_modules())
             if is_target(m)}
    owned = {f"{n}.out_proj" for n, m in found.items() if is_attention(m)}
    return {n: m for n, m in found.items() if n not in owned}


def without_tied_targets(module: nn.Module, targets: dict[str, nn.Module]) -> tuple[dict[str, nn.Module], list[str]]:
    """``targets`` less those whose weight a module that is not a target also holds (an output
    projection tied to the input embedding: scaling it would change a layer that already ran,
    which breaks LSUV's order), and a note for each one left out."""
    owners: dict[int, list[str]] = {}
    for name, owner in module.named_modules(remove_duplicate=False):
        for param in owner.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    kept, notes = {}, []
    for path, target in targets.items():
        others = [o for o in owners.get(id(getattr(target, "weight", None)), []) if o != path and o not in targets]
        if others:
            notes.append(f"{path}: weight tied to {others[0]} (not a conv / linear layer, it runs first); left as it is")
            continue
        kept[path] = target
    return kept, notes


def fittable_targets(module: nn.Module, targets: dict[str, nn.Module]) -> tuple[dict[str, nn.Module], list[str]]:
    """``targets`` less tied ones (:func:`without_tied_targets`) and those whose parametrized weight
    cannot be scaled (spectral norm: :func:`.parametrized.without_unscalable`), with a note each."""
    from .parametrized import without_unscalable

    kept, notes = without_tied_targets(module, targets)
    kept, unscalable = without_unscalable(kept)
    return kept, notes + unscalable
