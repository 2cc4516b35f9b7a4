"""Caffe's parameter fillers: the values a fresh Caffe net starts from.

They matter where LSUV keeps existing values: non-target blobs (Scale, Bias, PReLU) and, with
``--pre-init keep`` and no ``--weights``, the conv / linear weights themselves (e.g. LSUV on
top of the prototxt's ``xavier`` fillers). Values are drawn from a generator seeded by the
layer name, so a conversion is reproducible.
"""

from __future__ import annotations

import math
import zlib

import torch

KNOWN = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


class FillerError(ValueError):
    pass


def generator_for(layer_name: str, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{layer_name}/{index}".encode()))


def fill(filler, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor of Caffe's ``shape`` filled as Caffe's ``GetFiller(filler)`` would."""
    kind = filler.type
    count = math.prod(shape)
    if kind == "constant":
        return torch.full(shape, float(filler.value))
    if kind == "uniform":
        return torch.empty(shape).uniform_(filler.min, filler.max, generator=generator)
    if kind == "gaussian":
        values = torch.empty(shape).normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                raise FillerError("a sparse gaussian filler needs a blob with at least one axis")
            keep = torch.rand(shape, generator=generator) < filler.sparse / shape[0]
            values = values * keep
        return values
    if kind == "positive_unitball":
        values = torch.rand(shape, generator=generator)
        rows = values.reshape(shape[0] if shape else 1, -1)
        return (rows / rows.sum(dim=1, keepdim=True)).reshape(shape)
    if kind in ("xavier", "msra"):
        n = _fan(filler, shape, count)
        if kind == "xavier":
            bound = math.sqrt(3.0 / n)
            return torch.empty(shape).uniform_(-bound, bound, generator=generator)
        return torch.empty(shape).normal_(0.0, math.sqrt(2.0 / n), generator=generator)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise FillerError(f"the bilinear filler needs a square 4-D blob, got {tuple(shape)}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        axis = 1 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
        kernel = (axis[:, None] * axis[None, :]).to(torch.float32)
        return kernel.expand(shape).clone()
    raise FillerError(f"unknown filler type {kind!r} (known: {', '.join(KNOWN)})")


def _fan(filler, shape: tuple[int, ...], count: int) -> float:
    fan_in = count / shape[0] if len(shape) >= 1 and shape[0] else count
    fan_out = count / shape[1] if len(shape) >= 2 and shape[1] else count
    norm = filler.variance_norm  # FAN_IN=0, FAN_OUT=1, AVERAGE=2
    n = fan_in if norm == 0 else fan_out if norm == 1 else (fan_in + fan_out) / 2.0
    return max(n, 1e-12)
