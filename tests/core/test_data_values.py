"""Data values a model can't use are named for what they are, not reported as NaN/Inf later."""

from __future__ import annotations

import numpy as np
import pytest

from lsuv_convert.batch.load import ImageOptions, load_batch
from lsuv_convert.errors import DataError
from lsuv_convert.formats.model_graph import InputSpec

SPEC = [InputSpec("x", (None, 3, 4, 4))]


def test_float64_data_that_overflows_float32_says_so(tmp_path):
    data = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    data[0, 0, 0, 0] = 1e300
    np.save(tmp_path / "big.npy", data)
    with pytest.raises(DataError, match=r"float64 values up to 1e\+300 overflow float32"):
        load_batch(tmp_path / "big.npy", SPEC)


def test_float64_data_within_float32_range_loads(tmp_path):
    data = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    np.save(tmp_path / "ok.npy", data)
    batch = load_batch(tmp_path / "ok.npy", SPEC)
    assert batch.arrays[0].dtype == np.float32
    assert np.allclose(batch.arrays[0], data, atol=1e-6)


@pytest.mark.parametrize("std", [(0.0,), (1.0, 0.0, 1.0), (float("nan"),)])
def test_std_must_be_positive_in_the_library_too(tmp_path, std):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))
    with pytest.raises(DataError, match="--std must be finite numbers > 0"):
        load_batch(tmp_path / "d.npy", SPEC, image=ImageOptions(std=std))
