"""Weight pre-initialization: orthonormal (Saxe et al.), gaussian, or keep.

The weight of every target layer is viewed as a stack of matrices, one per group,
``(groups, rows, fan_in)``; each matrix gets orthonormal rows or columns, whichever its
shape allows. Orthonormalisation uses Cholesky-QR (two GEMMs and a triangular solve),
which is GEMM-bound and several times faster than Householder QR
(``torch.nn.init.orthogonal_``) for the wide, well-conditioned Gaussian matrices of big
layers. Big near-square matrices, which are ill-conditioned, go through shifted
Cholesky-QR3 (Fukaya et al. 2020: a shifted first pass, then two plain ones), still all
GEMM and triangular solves; small ones, and any matrix where that fails its check, go
through Householder QR. Every route returns the Q of the QR factorisation with a positive
diagonal, so the result is the same Haar-distributed matrix whichever route computed it.
Random numbers are drawn on the CPU from one seeded generator in target order, so the
result doesn't depend on the device.
"""

from __future__ import annotations

import torch
from torch import nn

from .settings import PRE_INIT_MODES


# Above this ratio of short to long side a Gaussian matrix is too ill-conditioned for
# float32 Cholesky-QR (condition number ~ (1+sqrt(a))/(1-sqrt(a))).
_CHOLESKY_MAX_ASPECT = 0.5
# Below this many rows Householder QR is already fast; above it, shifted Cholesky-QR3 is
# faster (CaffeNet's 4096 x 4096 fc7: 6.5 s of CPU against 9 s measured here).
_SHIFTED_MIN_ROWS = 512
_ORTHONORMAL_TOL = 1e-5


def grouped_view(module: nn.Module) -> torch.Tensor:
    """The weight as ``(groups, rows, fan_in)`` in the layer's own fan layout (a view)."""
    parts = int(getattr(module, "lsuv_parts", 1) or 1)
    w = module.weight
    out_axis = getattr(module, "lsuv_out_axis", 0)
    if parts > 1:  # q/k/v packed in one weight: each is its own matrix
        if out_axis == 0:
            return w.view(parts, w.shape[0] // parts, -1)
        return w.view(w.shape[0], parts, -1).permute(1, 2, 0)  # (in, parts * out) -> (parts, out, in)
    if out_axis == 1 and w.dim() == 2:  # stored (in, out) (transformers' Conv1D): rows are outputs
        return w.t().unsqueeze(0)
    custom = getattr(module, "lsuv_grouped_view", None)
    if custom is not None:
        return custom()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        g = module.groups  # stored (in, out/g, k...): rows are input channels of each group
        return w.view(g, w.shape[0] // g, -1)
    if isinstance(module, nn.modules.conv._ConvNd):
        g = module.groups
        return w.view(g, w.shape[0] // g, -1)
    return w.view(1, w.shape[0], -1)


def orthonormalize(a: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """Orthonormal rows (or columns, if taller than wide) of each matrix of ``a`` (g, r, c).

    ``overwrite`` lets the computation use ``a``'s memory (no second weight-sized tensor for a
    big layer); ``a`` then holds no meaningful values afterwards.
    """
    rows, cols = a.shape[-2:]
    if rows > cols:
        return orthonormalize(a.transpose(-1, -2), overwrite).transpose(-1, -2)
    if rows <= _CHOLESKY_MAX_ASPECT * cols:
        return _cholesky_qr2(a, overwrite)
    if rows >= _SHIFTED_MIN_ROWS:
        q = _shifted_cholesky_qr3(a)
        if q is not None:
            return q
    return _householder_rows(a)


def _cholesky_qr2(a: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """Rows of ``a`` (g, r, c), r <= c/2, made orthonormal by Cholesky-QR.

    For such wide Gaussian matrices one pass in float32 is accurate to ~1e-6; a probe of a
    few rows checks that cheaply and a second pass (Cholesky-QR2) runs only if it fails.
    """
    q = _cholesky_qr_step(a, overwrite)
    probe = q[..., : min(64, q.shape[-2]), :]
    err = (probe @ q.transpose(-1, -2) - torch.eye(q.shape[-2], dtype=q.dtype)[: probe.shape[-2]]).abs().max()
    if err > _ORTHONORMAL_TOL:
        q = _cholesky_qr_step(q, overwrite=True)
    return q


def _shifted_cholesky_qr3(a: torch.Tensor) -> torch.Tensor | None:
    """Orthonormal rows of a near-square ``a`` (g, r, c) by shifted Cholesky-QR3, or None.

    The Gram matrix of an ill-conditioned ``a`` is not numerically positive definite in
    float32; adding ``11 (r c + r (r + 1)) u ||a||^2`` to its diagonal makes it so, and the
    resulting factor is well enough conditioned for two plain Cholesky-QR passes (the
    method's proof covers condition numbers up to ~1/u). None when a Cholesky fails or the
    result misses the orthonormality check: the caller falls back to Householder QR.
    """
    rows, cols = a.shape[-2:]
    try:
        gram = _gram(a)
        diagonal = gram.diagonal(dim1=-2, dim2=-1)
        unit = torch.finfo(a.dtype).eps / 2
        shift = 11.0 * (rows * cols + rows * (rows + 1)) * unit * diagonal.sum(-1, keepdim=True)
        diagonal.add_(shift)
        chol = torch.linalg.cholesky(gram.double()).to(a.dtype)
        del gram
        q = torch.linalg.solve_triangular(chol, a, upper=False)
        q = _cholesky_qr_step(_cholesky_qr_step(q, overwrite=True), overwrite=True)
    except RuntimeError:  # torch.linalg.LinAlgError: not positive definite even shifted
        return None
    probe = q[..., : min(64, rows), :]
    err = (probe @ q.transpose(-1, -2) - torch.eye(rows, dtype=q.dtype)[: probe.shape[-2]]).abs().max()
    return q if bool(err <= _ORTHONORMAL_TOL) else None


def _cholesky_qr_step(a: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """One Cholesky-QR pass; with ``overwrite`` the triangular solve runs in ``a``'s memory."""
    gram = _gram(a)
    chol = torch.linalg.cholesky(gram.double()).to(a.dtype)
    del gram
    if overwrite:
        return torch.linalg.solve_triangular(chol, a, upper=False, out=a)
    return torch.linalg.solve_triangular(chol, a, upper=False)


def _gram(a: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """``a @ a.T`` computing only the lower block triangle (torch has no SYRK): ~40% fewer FLOPs."""
    rows = a.shape[-2]
    if rows < 512:
        return a @ a.transpose(-1, -2)
    edges = [rows * i // blocks for i in range(blocks + 1)]
    gram = a.new_empty(a.shape[:-2] + (rows, rows))
    for i in range(blocks):
        ai = a[..., edges[i]: edges[i + 1], :]
        for j in range(i + 1):
            aj = a[..., edges[j]: edges[j + 1], :]
            block = ai @ aj.transpose(-1, -2)
            gram[..., edges[i]: edges[i + 1], edges[j]: edges[j + 1]] = block
            if i != j:
                gram[..., edges[j]: edges[j + 1], edges[i]: edges[i + 1]] = block.transpose(-1, -2)
    return gram


def _householder_rows(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows via QR of the transpose, signs fixed so the result is Haar-distributed."""
    q, r = torch.linalg.qr(a.transpose(-1, -2))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q.transpose(-1, -2)


@torch.no_grad()
def pre_initialize(modules: list[nn.Module], mode: str, generator: torch.Generator | None) -> None:
    """Fill each module's weight per ``mode`` and zero its bias (``keep`` touches nothing).

    A parameter shared by several modules is initialized once. Modules may also be
    :class:`~lsuv_convert.lsuv.engine.LinearMap` views (one slice of a packed attention weight).
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
            values = orthonormalize(noise, overwrite=True)  # the noise is ours: no second copy
        else:  # gaussian: N(0, 1/fan_in), the paper's weaker variant
            values = noise / view.shape[-1] ** 0.5
        view.copy_(values.to(device=view.device, dtype=view.dtype))
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()
