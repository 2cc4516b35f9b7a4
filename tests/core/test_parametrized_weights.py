"""Weight-normed and parametrized layers through ``lsuv_init``: the weight the next forward pass
computes from the stored tensors is the one LSUV fitted (both forms of weight norm: legacy
``weight_g`` / ``weight_v`` and ``parametrizations.weight.original0`` / ``1``); the stored
parameters stay the same objects; a parametrization that divides any scale away (spectral norm)
is left out with a note."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from lsuv_convert import lsuv_init


def _model(form: str) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv1d(8, 8, 3, padding=1)
    if form == "legacy":
        conv = torch.nn.utils.weight_norm(conv, dim=2)
    elif form == "parametrized":
        conv = parametrizations.weight_norm(conv, dim=2)
    return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.GELU(), conv, nn.GELU(), nn.Flatten(), nn.Linear(8 * 16, 10))


def _variances(model, x) -> dict[int, float]:
    out = {}
    hooks = [model[i].register_forward_hook(lambda m, args, o, i=i: out.setdefault(i, float(o.var(unbiased=False))) and None)
             for i in (0, 2, 5)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("form", ["legacy", "parametrized"])
def test_weight_norm_keeps_the_fitted_weight(form):
    model = _model(form)
    x = torch.randn(16, 4, 16, generator=torch.Generator().manual_seed(1))
    stored = [id(p) for p in model[2].parameters()]
    report = lsuv_init(model, x, seed=0)
    assert [id(p) for p in model[2].parameters()] == stored
    assert all(abs(v - 1.0) < 0.02 for v in _variances(model, x).values())
    names = {e.name: e.status for e in report.account if e.name.startswith("2.")}
    assert len(names) == 3 and set(names.values()) == {"initialized"}  # g, v and bias
    if form == "legacy":
        g, v = model[2].weight_g, model[2].weight_v
        assert torch.allclose(g, torch.norm_except_dim(v, 2, 2))  # v is the fitted weight, g its norms


def test_a_parametrization_that_cannot_hold_a_scale_is_left_out():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), parametrizations.spectral_norm(nn.Linear(6, 6)))
    report = lsuv_init(model, torch.randn(32, 6), seed=0)
    assert [layer.name for layer in report.layers] == ["0"]
    assert any("_SpectralNorm" in note and note.startswith("2:") for note in report.notes)
