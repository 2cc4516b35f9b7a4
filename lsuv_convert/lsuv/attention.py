"""LSUV for ``nn.MultiheadAttention``: q, k, v and the output projection as four linear maps.

MultiheadAttention calls its projections as functions (``F.linear`` on slices of
``in_proj_weight``, ``out_proj.weight`` passed as a tensor), so no hook on a Linear ever
fires. Instead the attention module itself is the target:

* a forward pre-hook computes ``q = F.linear(query, W_q, b_q)`` (likewise k, v) from the
  module's own inputs and scales each slice until its output has unit variance; then it
  sets ``out_proj`` to the identity, so that the module's forward returns the attention
  output before the projection;
* the forward hook puts ``out_proj``'s weights back, scales them on that attention output,
  and hands the projected output on.

The module's forward runs once, as for every other layer; only the three input projections
are evaluated once more, in the pre-hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .engine import LinearMap
from .targets import is_attention


def join(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def projection_maps(mha: nn.MultiheadAttention) -> list[tuple[str, LinearMap]]:
    """(suffix, map) of the q, k, v input projections and out_proj, as views of the parameters."""
    e = mha.embed_dim
    bias = mha.in_proj_bias
    maps = []
    for i, label in enumerate("qkv"):
        b = bias[i * e:(i + 1) * e] if bias is not None else None
        if mha._qkv_same_embed_dim:
            w = mha.in_proj_weight[i * e:(i + 1) * e]
            maps.append((f"in_proj_weight[{label}]", LinearMap(w, b, lsuv_op="MultiheadAttention")))
        else:
            w = getattr(mha, f"{label}_proj_weight")
            maps.append((f"{label}_proj_weight", LinearMap(w, b, lsuv_op="MultiheadAttention")))
    maps.append(("out_proj", LinearMap(mha.out_proj.weight, mha.out_proj.bias, lsuv_op="MultiheadAttention.out_proj")))
    return maps


def parameter_names(mha: nn.MultiheadAttention) -> list[str]:
    """The attention's own parameters the four maps cover (relative names)."""
    names = ["in_proj_weight"] if mha._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    if mha.in_proj_bias is not None:
        names.append("in_proj_bias")
    names.append("out_proj.weight")
    if mha.out_proj.bias is not None:
        names.append("out_proj.bias")
    return names


_ARG_NAMES = ("query", "key", "value")


def attention_inputs(mha: nn.Module, args, kwargs) -> list[torch.Tensor]:
    """query, key and value of one call of an attention module, given by position or by name."""
    values = list(args[:3])
    for name in _ARG_NAMES[len(values):]:
        values.append(kwargs[name])
    return values


def attention_hooks(name: str, module: nn.Module, tracker) -> list | None:
    """For :func:`~lsuv_convert.lsuv.engine.lsuv_walk`: the hooks of an attention target, else None."""
    return AttentionFit(name, module, tracker).register() if is_attention(module) else None


class AttentionFit:
    """The pre-hook / hook pair of one MultiheadAttention target during one walk."""

    def __init__(self, name: str, mha: nn.MultiheadAttention, tracker):
        self.name = name
        self.mha = mha
        self.tracker = tracker
        self.saved: tuple[torch.Tensor, torch.Tensor | None] | None = None  # out_proj while it is the identity

    def register(self) -> list:
        return [self.mha.register_forward_pre_hook(self.pre_hook, with_kwargs=True),
                self.mha.register_forward_hook(self.hook, with_kwargs=True)]

    def _inputs(self, args, kwargs) -> list[torch.Tensor]:
        values = attention_inputs(self.mha, args, kwargs)
        if self.mha.batch_first and getattr(values[0], "is_nested", False):
            raise ValueError(f"{self.name}: nested-tensor inputs are not supported")
        return values

    @property
    def key(self) -> torch.Tensor:
        """The tensor that identifies the attention (its maps are views of it)."""
        return self.mha.in_proj_weight if self.mha._qkv_same_embed_dim else self.mha.q_proj_weight

    @torch.no_grad()
    def pre_hook(self, module, args, kwargs):
        # The maps are taken at the call, not before: a streaming run materializes the tensors
        # right before the module runs.
        self.maps = projection_maps(self.mha)
        if not self.tracker.first_use(self.name, self.key):
            return None  # fitted at an earlier call: runs as it is
        for (suffix, linear_map), x in zip(self.maps[:3], self._inputs(args, kwargs)):
            def run(x=x, m=linear_map):
                return F.linear(x, m.weight, m.bias)

            self.tracker.fit_map(join(self.name, suffix), linear_map, run, run(), self.key)
        out = self.mha.out_proj
        self.saved = (out.weight.detach().clone(), out.bias.detach().clone() if out.bias is not None else None)
        out.weight.copy_(torch.eye(out.weight.shape[0], out.weight.shape[1], dtype=out.weight.dtype, device=out.weight.device))
        if out.bias is not None:
            out.bias.zero_()
        return None

    @torch.no_grad()
    def hook(self, module, args, kwargs, output):
        if self.saved is None:
            return None
        out = self.mha.out_proj
        weight, bias = self.saved
        self.saved = None
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
        attended, weights = output if isinstance(output, tuple) else (output, None)
        suffix, linear_map = self.maps[3]
        def run():
            return F.linear(attended, linear_map.weight, linear_map.bias)

        projected = self.tracker.fit_map(join(self.name, suffix), linear_map, run, run(), self.key)
        return (projected, weights) if isinstance(output, tuple) else projected


def packed_parts(owner: nn.Module | None, features: int) -> int:
    """How many attention maps one projection with ``features`` outputs packs, by the convention of
    transformers' GPT-style attention modules: ``c_attn(x).split(self.split_size, dim=-1)`` gives
    q, k, v (or k, v for cross-attention). 1 when ``owner`` splits nothing."""
    size = getattr(owner, "split_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or features % size:
        return 1
    parts = features // size
    return parts if parts in (2, 3) else 1
