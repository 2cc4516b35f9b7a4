"""statistics.all_finite: the writers' check that a weight can go into a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsuv_convert.lsuv.statistics import all_finite


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_finite_values_pass_even_when_their_sum_overflows(kind, dtype):
    big = np.finfo(dtype).max / 2
    values = np.full(1000, big, dtype=dtype)  # every element finite, the sum is not
    ok = np.arange(1000, dtype=dtype)
    convert = torch.from_numpy if kind == "torch" else np.asarray
    assert all_finite(convert(values)) and all_finite(convert(ok))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_one_non_finite_element_fails(kind, bad):
    values = np.random.default_rng(0).standard_normal(10_001).astype(np.float32)
    values[7_777] = bad
    assert not all_finite(torch.from_numpy(values) if kind == "torch" else values)
