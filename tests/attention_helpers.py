"""Independent measurement of every linear map of an eager model, attention included.

Own forward hooks, no engine code: each nn.Linear / Conv output at its first call; for each
nn.MultiheadAttention, q, k and v recomputed with F.linear on the slices of its weights from
the module's own inputs, and out_proj's output, which is the module's output. torch's fused
attention kernels are switched off while measuring so that every module call is seen.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _var(t: torch.Tensor) -> float:
    return float(t.detach().double().var(unbiased=False))


@contextlib.contextmanager
def no_fast_path():
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def attention_out_projs(model: nn.Module) -> set[int]:
    return {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def measure(model: nn.Module, *args, extra_types: tuple = (), **kwargs) -> dict[str, float]:
    """Name -> output variance of every linear map at its first call (``mha.q`` ... ``mha.out_proj``)."""
    found: dict[str, float] = {}
    hooks = []
    skip = attention_out_projs(model)

    def linear_hook(name):
        def hook(mod, inputs, output):
            found.setdefault(name, _var(output))
        return hook

    def mha_pre(name):
        def hook(mod, args, kw):
            q, k, v = (list(args) + [kw.get(n) for n in ("query", "key", "value")][len(args):])[:3]
            e = mod.embed_dim
            for i, (label, x) in enumerate(zip("qkv", (q, k, v))):
                w = mod.in_proj_weight[i * e:(i + 1) * e] if mod._qkv_same_embed_dim else getattr(mod, f"{label}_proj_weight")
                b = mod.in_proj_bias[i * e:(i + 1) * e] if mod.in_proj_bias is not None else None
                x = x.transpose(0, 1) if False else x
                found.setdefault(f"{name}.{label}", _var(F.linear(x, w, b)))
        return hook

    def mha_post(name):
        def hook(mod, args, kw, output):
            found.setdefault(f"{name}.out_proj", _var(output[0]))
        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            hooks.append(m.register_forward_pre_hook(mha_pre(name), with_kwargs=True))
            hooks.append(m.register_forward_hook(mha_post(name), with_kwargs=True))
        elif (isinstance(m, LINEAR_TYPES) or isinstance(m, extra_types)) and id(m) not in skip:
            hooks.append(m.register_forward_hook(linear_hook(name)))
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), no_fast_path():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
        for m, t in was.items():
            m.training = t
    return found


def expected_maps(model: nn.Module, extra_types: tuple = ()) -> set[str]:
    """Every linear map the model holds (four per attention)."""
    names = set()
    skip = attention_out_projs(model)
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            names |= {f"{name}.q", f"{name}.k", f"{name}.v", f"{name}.out_proj"}
        elif (isinstance(m, LINEAR_TYPES) or isinstance(m, extra_types)) and id(m) not in skip:
            names.add(name)
    return names
