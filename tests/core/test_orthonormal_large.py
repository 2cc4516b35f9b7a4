"""Big near-square weights take shifted Cholesky-QR3 (GEMM speed) and give the Householder Q."""

from __future__ import annotations

import torch

from lsuv_convert.lsuv import orthonormal
from lsuv_convert.lsuv.orthonormal import orthonormalize


def _error(q: torch.Tensor) -> float:
    return float((q @ q.transpose(-1, -2) - torch.eye(q.shape[-2])).abs().max())


def test_near_square_goes_through_shifted_cholesky_and_matches_householder():
    a = torch.randn(1, 600, 640, generator=torch.Generator().manual_seed(0))
    shifted = orthonormal._shifted_cholesky_qr3(a)
    assert shifted is not None
    assert _error(shifted) < 1e-5
    # same factorisation (positive diagonal of R), so the same matrix up to rounding
    assert float((shifted - orthonormal._householder_rows(a)).abs().max()) < 1e-3
    assert torch.equal(orthonormalize(a), shifted)


def test_tall_near_square_and_fallback_on_rank_deficient_input():
    tall = orthonormalize(torch.randn(1, 700, 600, generator=torch.Generator().manual_seed(1)))
    assert float((tall.transpose(-1, -2) @ tall - torch.eye(600)).abs().max()) < 1e-5
    a = torch.randn(1, 520, 600, generator=torch.Generator().manual_seed(2))
    a[0, 7] = a[0, 3]  # rank deficient: the Cholesky route must give up, Householder takes over
    assert orthonormal._shifted_cholesky_qr3(a) is None
    assert orthonormalize(a).shape == a.shape
