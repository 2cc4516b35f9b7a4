"""Orthonormal pre-init: W W^T = I (or W^T W = I) per group, in each layer's own fan layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsuv_convert.lsuv.orthonormal import grouped_view, orthonormalize, pre_initialize


def orthonormality_error(m: torch.Tensor) -> float:
    rows, cols = m.shape[-2:]
    gram = m @ m.transpose(-1, -2) if rows <= cols else m.transpose(-1, -2) @ m
    return float((gram - torch.eye(gram.shape[-1])).abs().max())


@pytest.mark.parametrize("shape", [(1, 64, 27), (1, 27, 64), (1, 256, 2304), (1, 300, 300), (4, 8, 72),
                                   (1, 1000, 4096), (1, 4096, 1000), (32, 1, 9), (1, 600, 1000)])
def test_orthonormalize_accuracy(shape):
    q = orthonormalize(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    assert q.shape == shape
    assert orthonormality_error(q) < 1e-4


@pytest.mark.parametrize("module,groups", [
    (nn.Conv2d(16, 32, 3), 1),
    (nn.Conv2d(16, 32, 3, groups=4), 4),
    (nn.Conv2d(32, 32, 3, groups=32), 32),  # depthwise
    (nn.ConvTranspose2d(16, 8, 4, groups=2), 2),
    (nn.Conv1d(4, 6, 5), 1),
    (nn.Linear(100, 10), 1),
    (nn.Linear(10, 100), 1),
])
def test_pre_init_per_group(module, groups):
    pre_initialize([module], "orthonormal", torch.Generator().manual_seed(0))
    view = grouped_view(module)
    assert view.shape[0] == groups
    assert orthonormality_error(view) < 1e-4
    if module.bias is not None:
        assert not module.bias.any()


def test_conv_transpose_uses_its_own_layout():
    m = nn.ConvTranspose2d(4, 16, 3)  # weight (in=4, out=16, 3, 3): rows are input channels
    pre_initialize([m], "orthonormal", torch.Generator().manual_seed(0))
    rows = m.weight.reshape(4, -1)
    assert float((rows @ rows.T - torch.eye(4)).abs().max()) < 1e-4


def test_modes_and_determinism():
    a, b, c = nn.Linear(20, 30), nn.Linear(20, 30), nn.Linear(20, 30)
    pre_initialize([a], "orthonormal", torch.Generator().manual_seed(5))
    pre_initialize([b], "orthonormal", torch.Generator().manual_seed(5))
    assert torch.equal(a.weight, b.weight)
    kept = c.weight.clone()
    pre_initialize([c], "keep", None)
    assert torch.equal(c.weight, kept)
    pre_initialize([c], "gaussian", torch.Generator().manual_seed(5))
    assert abs(float(c.weight.std()) - 20 ** -0.5) < 0.05
    with pytest.raises(ValueError):
        pre_initialize([c], "xavier", None)


def test_shared_weight_initialized_once():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    gen = torch.Generator().manual_seed(0)
    pre_initialize([a, b], "orthonormal", gen)
    ref = nn.Linear(8, 8)
    pre_initialize([ref], "orthonormal", torch.Generator().manual_seed(0))
    assert torch.equal(a.weight, ref.weight)
