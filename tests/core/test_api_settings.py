"""``lsuv_init`` takes the settings object the CLI and the pipeline use, or the same knobs one by
one; both give the same weights, and mixing them or naming an unknown knob is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsuv_convert import lsuv_init
from lsuv_convert.lsuv.settings import LsuvSettings


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_settings_object_and_knobs_give_identical_weights():
    x = torch.randn(16, 3, 8, 8)
    a, b = _net(), _net()
    report = lsuv_init(a, x, LsuvSettings(tol=0.01, seed=5))
    lsuv_init(b, x, tol=0.01, seed=5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert all(abs(layer.var_after - 1.0) < 0.01 for layer in report.layers)
    assert report.settings == LsuvSettings(tol=0.01, seed=5)


def test_settings_and_knobs_together_or_unknown_knobs_are_refused():
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(TypeError, match="not both"):
        lsuv_init(_net(), x, LsuvSettings(seed=1), tol=0.1)
    with pytest.raises(TypeError, match="tolerance"):
        lsuv_init(_net(), x, tolerance=0.1)


def test_invalid_settings_name_the_setting():
    with pytest.raises(ValueError, match="target_var"):
        lsuv_init(_net(), torch.randn(4, 3, 8, 8), LsuvSettings(target_var=-1.0))
