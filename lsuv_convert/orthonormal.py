"""Weight pre-initialization: orthonormal (Saxe et al.), gaussian, or keep.

The weight of every target layer is viewed as a stack of matrices, one per group,
``(groups, rows, fan_in)``; each matrix gets orthonormal rows or columns, whichever its
shape allows. Orthonormalisation uses Cholesky-QR (two GEMMs and a triangular solve),
which is GEMM-bound and several times faster than Householder QR
(``torch.nn.init.orthogonal_``) for the wide, well-conditioned Gaussian matrices of big
layers; near-square matrices, which are ill-conditioned, go through Householder QR.
Random numbers are drawn on the CPU from one seeded generator in target order, so the
result doesn't depend on the device.
"""

from __future__ import annotations

import torch
from torch import nn

PRE_INIT_MODES = ("orthonormal", "gaussian", "keep")

# Above this ratio of short to long side a Gaussian matrix is too ill-conditioned for
# float32 Cholesky-QR (condition number ~ (1+sqrt(a))/(1-sqrt(a))).
_CHOLESKY_MAX_ASPECT = 0.5


def grouped_view(module: nn.Module) -> torch.Tensor:
    """The weight as ``(groups, rows, fan_in)`` in the layer's own fan layout (a view)."""
    custom = getattr(module, "lsuv_grouped_view", None)
    if custom is not None:
        return custom()
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        g = module.groups  # stored (in, out/g, k...): rows are input channels of each group
        return w.view(g, w.shape[0] // g, -1)
    if isinstance(module, nn.modules.conv._ConvNd):
        g = module.groups
        return w.view(g, w.shape[0] // g, -1)
    return w.view(1, w.shape[0], -1)


def orthonormalize(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows (or columns, if taller than wide) of each matrix of ``a`` (g, r, c)."""
    rows, cols = a.shape[-2:]
    if rows > cols:
        return orthonormalize(a.transpose(-1, -2)).transpose(-1, -2)
    if rows <= _CHOLESKY_MAX_ASPECT * cols:
        return _cholesky_qr2(a)
    return _householder_rows(a)


def _cholesky_qr2(a: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` (g, r, c), r << c, made orthonormal by Cholesky-QR, repeated once if needed."""
    q = a
    for _ in range(2):
        gram = q @ q.transpose(-1, -2)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
        if q is not a and (gram - eye).abs().max() < 1e-6:
            break
        chol = torch.linalg.cholesky(gram.double()).to(q.dtype)
        q = torch.linalg.solve_triangular(chol, q, upper=False)
    return q


def _householder_rows(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows via QR of the transpose, signs fixed so the result is Haar-distributed."""
    q, r = torch.linalg.qr(a.transpose(-1, -2))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q.transpose(-1, -2)


@torch.no_grad()
def pre_initialize(modules: list[nn.Module], mode: str, generator: torch.Generator | None) -> None:
    """Fill each module's weight per ``mode`` and zero its bias (``keep`` touches nothing).

    A parameter shared by several modules is initialized once.
    """
    if mode not in PRE_INIT_MODES:
        raise ValueError(f"pre_init must be one of {PRE_INIT_MODES}, got {mode!r}")
    if mode == "keep":
        return
    seen: set[int] = set()
    for module in modules:
        weight = module.weight
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        view = grouped_view(module)
        noise = torch.randn(view.shape, generator=generator, dtype=torch.float32)
        if mode == "orthonormal":
            values = orthonormalize(noise)
        else:  # gaussian: N(0, 1/fan_in), the paper's weaker variant
            values = noise / view.shape[-1] ** 0.5
        view.copy_(values.to(device=view.device, dtype=view.dtype))
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()
