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


# -- models and measurements several attention test files share ------------------------------------

def trace(model, args, **kw):
    """torch.jit.trace without its warnings."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, args, **kw)


class Seq2Seq(nn.Module):
    """nn.TransformerDecoder: self- and cross-attention (q from one input, k/v from another)."""

    def __init__(self):
        super().__init__()
        self.d = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64), 2)

    def forward(self, tgt, memory):
        return self.d(tgt, memory)


class FusedAttention(nn.Module):
    """nn.MultiheadAttention that traces to the fused ``_native_multi_head_attention``."""

    def __init__(self):
        super().__init__()
        self.a = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc(self.a(x, x, x, need_weights=False)[0])


def tiny_bert():
    """transformers BERT from a 2-layer, 32-wide config (random weights, traceable)."""
    import pytest

    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, torchscript=True)
    return transformers.BertModel(config).eval()


def tiny_gpt2():
    """transformers GPT-2 from a 2-layer, 32-wide config (random weights, traceable)."""
    import pytest

    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                     torchscript=True, use_cache=False)
    return transformers.GPT2Model(config).eval()


def conv1d_variances(model: nn.Module, *args) -> dict[str, float]:
    """Every transformers Conv1D output at its first call (own hooks); c_attn as its q, k, v thirds."""
    found, hooks = {}, []
    for name, m in model.named_modules():
        if type(m).__name__ == "Conv1D":
            def hook(mod, inputs, out, name=name):
                pieces = zip("qkv", out.split(out.shape[-1] // 3, dim=-1)) if name.endswith("c_attn") else [("", out)]
                for label, piece in pieces:
                    found.setdefault(f"{name}[{label}]" if label else name, _var(piece))
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    return found
