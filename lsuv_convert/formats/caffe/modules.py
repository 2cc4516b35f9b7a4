"""Torch modules and functions with Caffe's exact forward semantics (TEST phase).

Parameters and buffers are held in Caffe's own blob layout, so saving them back is a copy.
Functions are module-level so that the generated ``torch.fx`` code can refer to them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _along(p: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``p`` (shape of x's axes axis..axis+p.dim()-1) viewed to broadcast against ``x``."""
    return p.reshape((1,) * axis + tuple(p.shape) + (1,) * (x.dim() - axis - p.dim()))


class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm: blobs mean, variance and a moving-average factor s (use mean/s, var/s).

    With ``use_global_stats`` false (Caffe's TEST default is true) it normalises with the
    batch's own statistics, biased variance, over every axis but 1, as Caffe does.
    """

    def __init__(self, channels: int, eps: float, use_global_stats: bool):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("factor", torch.ones(1))
        self.eps = float(eps)
        self.use_global_stats = bool(use_global_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_global_stats:
            f = self.factor[0]
            s = torch.where(f == 0, torch.zeros_like(f), 1.0 / f)
            mean, var = self.mean * s, self.variance * s
        else:
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.mean(dim=dims)
            var = (x - _along(mean, x, 1)).square().mean(dim=dims)
        return (x - _along(mean, x, 1)) / torch.sqrt(_along(var, x, 1) + self.eps)


class CaffeScale(nn.Module):
    """Scale layer with a learned multiplier (one bottom), optionally with a learned bias."""

    def __init__(self, shape: tuple[int, ...], axis: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * _along(self.weight, x, self.axis)
        if self.bias is not None:
            y = y + _along(self.bias, x, self.axis)
        return y


class CaffeBias(nn.Module):
    """Bias layer with a learned addend (one bottom); with two bottoms only ``bias`` (the optional
    learned bias of a two-bottom Scale) is used."""

    def __init__(self, shape: tuple[int, ...], axis: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape))
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _along(self.bias, x, self.axis)


class CaffePReLU(nn.Module):
    """PReLU: slope per channel (axis 1), or one shared slope stored as a 0-d blob."""

    def __init__(self, channels: int, shared: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.full(() if shared else (channels,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight.reshape(-1))


class CaffePooling(nn.Module):
    """2-D pooling for the geometries torch's own pooling doesn't reproduce (pad above half the
    kernel, or a last window Caffe keeps and torch drops): explicit padding to the exact extent of
    Caffe's windows, then for AVE Caffe's divisor (windows are clipped at ``size + pad``)."""

    def __init__(self, method: str, kernel, stride, pad, in_size, out_size):
        super().__init__()
        self.method = method
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        self.extra = tuple((o - 1) * s + k - p - n for o, s, k, p, n in zip(out_size, stride, kernel, pad, in_size))
        if method == "AVE":
            rows = [torch.tensor([min(i * s - p + k, n + p) - (i * s - p) for i in range(o)], dtype=torch.float32)
                    for o, s, k, p, n in zip(out_size, stride, kernel, pad, in_size)]
            self.register_buffer("divisor", rows[0][:, None] * rows[1][None, :], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (eh, ew) = self.pad, self.extra
        if eh < 0:
            x = x[..., : x.shape[-2] + eh, :]
        if ew < 0:
            x = x[..., : x.shape[-1] + ew]
        fill = -math.inf if self.method == "MAX" else 0.0
        x = F.pad(x, (pw, max(ew, 0), ph, max(eh, 0)), value=fill)
        if self.method == "MAX":
            return F.max_pool2d(x, self.kernel, self.stride)
        sums = F.avg_pool2d(x, self.kernel, self.stride) * (self.kernel[0] * self.kernel[1])
        return sums / self.divisor


def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=(-2, -1), keepdim=True)


def global_ave_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-2, -1), keepdim=True)


def lrn_within_channel(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's WITHIN_CHANNEL LRN: x * (1 + alpha * mean of x^2 over a size x size window)^-beta
    (zero padded, divisor always size^2; Caffe ignores k here)."""
    pad = (size - 1) // 2
    window_mean = F.avg_pool2d(x * x, size, stride=1, padding=pad, count_include_pad=True)
    return x * torch.pow(1.0 + alpha * window_mean, -beta)


def power(x: torch.Tensor, power_: float, scale: float, shift: float) -> torch.Tensor:
    y = x * scale + shift if (scale != 1.0 or shift != 0.0) else x
    return y if power_ == 1.0 else torch.pow(y, power_)


def eltwise_sum(*xs: torch.Tensor, coeffs: tuple[float, ...] = ()) -> torch.Tensor:
    out = xs[0] * coeffs[0] if coeffs and coeffs[0] != 1.0 else xs[0]
    for i, x in enumerate(xs[1:], start=1):
        c = coeffs[i] if coeffs else 1.0
        out = out + (x * c if c != 1.0 else x)
    return out


def eltwise_prod(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def eltwise_max(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


def scale_by(x: torch.Tensor, factor: torch.Tensor, axis: int) -> torch.Tensor:
    """Two-bottom Scale: multiply by the second bottom, broadcast from ``axis``."""
    return x * _along(factor, x, axis) if factor.dim() else x * factor


def bias_by(x: torch.Tensor, addend: torch.Tensor, axis: int) -> torch.Tensor:
    """Two-bottom Bias: add the second bottom, broadcast from ``axis``."""
    return x + _along(addend, x, axis) if addend.dim() else x + addend


def caffe_reshape(x: torch.Tensor, dims: tuple[int, ...], axis: int, num_axes: int) -> torch.Tensor:
    """Caffe's Reshape: ``dims`` replace axes [axis, axis+num_axes) (0 copies, -1 infers)."""
    shape = list(x.shape)
    start = axis if axis >= 0 else len(shape) + axis + 1
    end = len(shape) if num_axes == -1 else start + num_axes
    middle = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(shape[:start] + middle + shape[end:])


def scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x * factor
