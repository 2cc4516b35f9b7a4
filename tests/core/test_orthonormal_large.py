"""Orthonormal draws at sizes where the fast routes matter: properties only (orthonormal to
tolerance, the shape asked for, the Haar-distributed Q of the QR factorisation), whichever
numerical route computed them."""

from __future__ import annotations

import pytest
import torch

from lsuv_convert.lsuv.orthonormal import UnitSeeds, orthonormalize


def _error(q: torch.Tensor) -> float:
    rows, cols = q.shape[-2:]
    gram = q @ q.transpose(-1, -2) if rows <= cols else q.transpose(-1, -2) @ q
    return float((gram - torch.eye(min(rows, cols))).abs().max())


def _haar_reference(a: torch.Tensor) -> torch.Tensor:
    """Q of ``a = Q R`` (of ``a^T`` for a wide or square ``a``) with diag(R) > 0, in float64: the Haar draw."""
    wide = a.shape[-2] <= a.shape[-1]  # rows orthonormal (a square matrix too): the QR of a^T
    m = (a.transpose(-1, -2) if wide else a).double()
    q, r = torch.linalg.qr(m)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return (q.transpose(-1, -2) if wide else q).float()


@pytest.mark.parametrize("shape", [(1, 600, 640), (1, 700, 600), (1, 256, 2816), (1, 2816, 256), (2, 300, 300)])
def test_large_draws_are_the_haar_q(shape):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    q = orthonormalize(a.clone())
    assert q.shape == a.shape
    assert _error(q) < 1e-5
    # The same matrix as the sign-corrected QR of the same noise, up to float32 rounding.
    assert float((q - _haar_reference(a)).abs().max()) < 1e-3


@pytest.mark.parametrize("shape", [(1, 520, 600), (1, 100, 400)])
def test_rank_deficient_input_still_gives_orthonormal_rows(shape):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    a[0, 7] = a[0, 3]  # rank deficient: no route may return non-orthonormal rows or fail
    q = orthonormalize(a.clone())
    assert q.shape == a.shape
    assert torch.isfinite(q).all()
    assert _error(q) < 1e-4


@pytest.mark.parametrize("rows,cols", [(6, 6), (3, 12), (12, 3)])
def test_draws_are_haar_distributed(rows, cols):
    """Haar moments: every entry has mean 0 and E[q_ij^2] = 1 / (the long side); without the sign
    fix, LAPACK's Householder QR gives a diagonal that is negative on average."""
    seeds = UnitSeeds(7)
    draws = torch.stack([orthonormalize(torch.randn(1, rows, cols, generator=seeds.generator(i)))[0]
                         for i in range(2000)]).double()
    long_side = max(rows, cols)
    stderr = (1.0 / long_side) ** 0.5 / 2000 ** 0.5
    assert float(draws.mean(0).abs().max()) < 5 * stderr
    assert float(((draws ** 2).mean(0) - 1.0 / long_side).abs().max()) < 0.25 / long_side
    diagonal = torch.diagonal(draws, dim1=-2, dim2=-1)
    assert float(diagonal.mean(0).abs().max()) < 5 * stderr
