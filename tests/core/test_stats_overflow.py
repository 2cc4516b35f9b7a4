"""Finite outputs whose squares overflow float32 (|x| ~ 1e20) still get a finite variance."""

from __future__ import annotations

import math

import torch

from lsuv_convert.lsuv.engine import output_stats


def test_variance_of_huge_but_finite_values_is_finite_and_exact():
    x = torch.randn(2, 16, 64, 64, generator=torch.Generator().manual_seed(0)) * 1e20
    var, mean = output_stats(x)
    want_var, want_mean = torch.var_mean(x.double(), unbiased=False)
    assert math.isfinite(var) and abs(var / float(want_var) - 1) < 1e-4
    assert abs(mean - float(want_mean)) < 1e-4 * math.sqrt(float(want_var))


def test_truly_infinite_values_stay_non_finite():
    x = torch.randn(2, 16, 64, 64) * 1e20
    x[0, 0, 0, 0] = float("inf")
    assert not math.isfinite(output_stats(x)[0])
