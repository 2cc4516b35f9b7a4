"""``lsuv_init`` takes the settings object whole (the pipeline hands it over as it is): the same
weights as the same values given one by one, for every field."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lsuv_convert.lsuv.api import lsuv_init
from lsuv_convert.lsuv.settings import DEFAULTS


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))


@pytest.mark.parametrize("change", [dict(pre_init="keep"), dict(pre_init="gaussian"), dict(target_var=4.0),
                                    dict(center=True), dict(tol=0.5), dict(max_iter=1), dict(seed=7)])
def test_a_settings_object_gives_what_its_fields_give(change):
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    settings = replace(DEFAULTS, **{"seed": 3, **change})
    whole, by_field = _net(), _net()
    lsuv_init(whole, x, settings=settings, device="cpu")
    lsuv_init(by_field, x, pre_init=settings.pre_init, tol=settings.tol, max_iter=settings.max_iter,
              target_var=settings.target_var, center=settings.center, seed=settings.seed, device="cpu")
    for a, b in zip(whole.parameters(), by_field.parameters()):
        assert torch.equal(a, b)
    if change.get("pre_init") == "keep":
        kept = _net()[0].weight
        assert torch.allclose(whole[0].weight / whole[0].weight.norm(), kept / kept.norm(), atol=1e-6)
