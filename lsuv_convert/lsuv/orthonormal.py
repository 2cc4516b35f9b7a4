"""Weight pre-initialization: orthonormal (Saxe et al.), gaussian, or keep.

The weight of every target layer is viewed as a stack of matrices, one per group,
``(groups, rows, fan_in)``; each matrix gets orthonormal rows or columns, whichever its
shape allows. The orthonormal draw is Haar-distributed: the Q of the QR factorisation of a
Gaussian matrix, with the signs fixed so that R has a positive diagonal (Mezzadri 2007).
Two routes compute that same Q:

- wide or tall matrices (short side at most half the long side, the big layers of MLPs and
  language models) by Cholesky-QR2: two GEMM-bound passes, faster than LAPACK's
  Householder QR on such well-conditioned Gaussian matrices; the Cholesky factor's diagonal
  is positive, so no sign fix is needed;
- near-square ones by Householder QR (``torch.linalg.qr``) and the sign fix: a Gaussian
  near-square matrix is too ill-conditioned for Cholesky-QR in float32, and on this
  hardware every GEMM-only remedy measured (shifted Cholesky-QR3) was slower than LAPACK.

``benchmarks/preinit_speed.py`` measures both against bare ``torch.linalg.qr`` and
``torch.nn.init.orthogonal_``. Random numbers are drawn on the CPU, each unit from a
generator seeded from the run's seed and the unit's index (:class:`UnitSeeds`), so the draw
depends neither on the device nor on the order the units are filled in.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .settings import PRE_INIT_MODES


# Above this ratio of short to long side a Gaussian matrix is too ill-conditioned for
# float32 Cholesky-QR (condition number ~ (1+sqrt(a))/(1-sqrt(a))).
_CHOLESKY_MAX_ASPECT = 0.5
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
    """Orthonormal rows (or columns, if taller than wide) of each matrix of ``a`` (g, r, c):
    the Q of its QR factorisation with a positive diagonal of R (Haar for Gaussian ``a``).

    ``overwrite`` lets the computation use ``a``'s memory (no second weight-sized tensor for a
    big layer); ``a`` then holds no meaningful values afterwards.
    """
    rows, cols = a.shape[-2:]
    if rows > cols:
        return orthonormalize(a.transpose(-1, -2), overwrite).transpose(-1, -2)
    if rows <= _CHOLESKY_MAX_ASPECT * cols:
        q = _cholesky_qr2(a, overwrite)
        if q is not None:
            return q
    return _householder_rows(a)


def _cholesky_qr2(a: torch.Tensor, overwrite: bool = False) -> torch.Tensor | None:
    """Rows of ``a`` (g, r, c), r <= c/2, made orthonormal by Cholesky-QR; None if it fails.

    For such wide Gaussian matrices one pass in float32 is accurate to ~1e-6; a probe of a
    few rows checks that cheaply and a second pass (Cholesky-QR2) runs only if it fails.
    None (the caller then takes Householder QR) when a Cholesky factorisation fails or the
    result misses the check, which only a degenerate input can cause. ``a`` is only
    overwritten once the first factorisation has succeeded.
    """
    try:
        q = _cholesky_qr_step(a, overwrite)
        if _probe_error(q) > _ORTHONORMAL_TOL:
            q = _cholesky_qr_step(q, overwrite=True)
    except RuntimeError:  # torch.linalg.LinAlgError: the Gram matrix is not positive definite
        return None
    return q if _probe_error(q) <= _ORTHONORMAL_TOL else None


def _probe_error(q: torch.Tensor) -> float:
    """Largest deviation from orthonormality of the first (at most) 64 rows against all rows."""
    probe = q[..., : min(64, q.shape[-2]), :]
    eye = torch.eye(q.shape[-2], dtype=q.dtype, device=q.device)[: probe.shape[-2]]
    return float((probe @ q.transpose(-1, -2) - eye).abs().max())


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


def unit_seeds(seed: int | None) -> "UnitSeeds":
    """The seeds of a run's pre-init draws, one per unit (see :class:`UnitSeeds`)."""
    if seed is None:  # torch's global generator decides, once per run
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return UnitSeeds(int(seed))


class UnitSeeds:
    """Unit ``i`` of a run (its ``i``-th target in registration order) draws from a generator of
    its own, seeded from the run's seed and ``i``: the draws don't depend on the order the units
    are filled in, so a streaming run (which fills each layer right before it runs, in execution
    order) draws exactly what a run that fills them all first draws."""

    def __init__(self, seed: int):
        self.seed = seed

    def generator(self, index: int) -> torch.Generator:
        digest = hashlib.blake2b(f"{self.seed}/{index}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


@torch.no_grad()
def pre_initialize(modules: list[nn.Module], mode: str, seeds: UnitSeeds | torch.Generator | None) -> None:
    """Fill each module's weight per ``mode`` and zero its bias (``keep`` touches nothing).

    Module ``i`` draws from ``seeds.generator(i)``; a ``torch.Generator`` given instead serves
    the modules one after another, in list order. A parameter shared by several modules is
    initialized once. Modules may also be :class:`~lsuv_convert.lsuv.engine.LinearMap` views
    (one slice of a packed attention weight).
    """
    if mode not in PRE_INIT_MODES:
        raise ValueError(f"pre_init must be one of {PRE_INIT_MODES}, got {mode!r}")
    if mode == "keep":
        return
    seeds = seeds if seeds is not None else unit_seeds(None)
    seen: set[int] = set()
    for index, module in enumerate(modules):
        if id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        generator = seeds if isinstance(seeds, torch.Generator) else seeds.generator(index)
        pre_initialize_unit(module, mode, generator)


@torch.no_grad()
def pre_initialize_unit(module: nn.Module, mode: str, generator: torch.Generator) -> None:
    """Fill one module's weight per ``mode`` (orthonormal or gaussian) and zero its bias.

    The noise is drawn on the CPU (the same numbers on every device) and orthonormalised
    where the weight lives, so that on a GPU the QR runs there. A float32 CPU weight is drawn
    into and orthonormalised in its own memory (no second weight-sized tensor); ``randn`` and
    ``normal_`` draw the same numbers from a generator.
    """
    view = grouped_view(module)
    in_place = view.device.type == "cpu" and view.dtype == torch.float32 and view.is_contiguous()
    if in_place:
        noise = view.normal_(generator=generator)
    else:
        noise = torch.randn(view.shape, generator=generator, dtype=torch.float32)
        if view.device.type != "cpu":
            noise = noise.to(view.device)
    if mode == "orthonormal":
        values = orthonormalize(noise, overwrite=True)  # the noise is ours: no second copy
    else:  # gaussian: N(0, 1/fan_in), the paper's weaker variant
        values = noise.div_(view.shape[-1] ** 0.5)
    if not (values.data_ptr() == view.data_ptr() and values.stride() == view.stride()):
        view.copy_(values.to(dtype=view.dtype))
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.zero_()
