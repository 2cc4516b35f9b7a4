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


def max_pool_with_mask(x: torch.Tensor, kernel, stride, pad, ceil: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MAX pooling and Caffe's mask top: each maximum's flat index h * W + w in its input plane."""
    out, index = F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil, return_indices=True)
    return out, index.to(x.dtype)


def threshold(x: torch.Tensor, t: float) -> torch.Tensor:
    return (x > t).to(x.dtype)


def exp_layer(x: torch.Tensor, inner_scale: float, inner_shift: float) -> torch.Tensor:
    """Caffe's Exp: base^(shift + scale * x), here exp(ln(base) * scale * x + ln(base) * shift)."""
    return torch.exp(x * inner_scale + inner_shift)


def log_layer(x: torch.Tensor, scale: float, shift: float, inv_log_base: float) -> torch.Tensor:
    """Caffe's Log: log_base(shift + scale * x)."""
    y = torch.log(x * scale + shift)
    return y * inv_log_base if inv_log_base != 1.0 else y


def swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    return x * torch.sigmoid(x * beta)


def tile(x: torch.Tensor, reps: tuple[int, ...]) -> torch.Tensor:
    return x.repeat(reps)


def reduction(x: torch.Tensor, op: str, axis: int, coeff: float) -> torch.Tensor:
    """Caffe's Reduction over every axis from ``axis`` on, times ``coeff``."""
    flat = x.reshape(*x.shape[:axis], -1)
    if op == "ASUM":
        flat = flat.abs()
    elif op == "SUMSQ":
        flat = flat * flat
    y = flat.mean(dim=-1) if op == "MEAN" else flat.sum(dim=-1)
    return y * coeff if coeff != 1.0 else y


def mvn(x: torch.Tensor, start: int, normalize_variance: bool, eps: float) -> torch.Tensor:
    """Caffe's MVN: subtract the mean over axes ``start``.. ; divide by (std + eps) (Caffe adds eps
    to the standard deviation, not to the variance)."""
    dims = tuple(range(start, x.dim()))
    y = x - x.mean(dim=dims, keepdim=True)
    if not normalize_variance:
        return y
    return y / (torch.sqrt((y * y).mean(dim=dims, keepdim=True)) + eps)


class CaffeEmbed(nn.Module):
    """Embed: rows of a (input_dim, num_output) table picked by the bottom's values, plus a bias."""

    def __init__(self, rows: int, outputs: int, bias: bool):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(rows, outputs))
        self.bias = nn.Parameter(torch.zeros(outputs)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.embedding(x.long(), self.table)
        return y + self.bias if self.bias is not None else y


class CaffeParameter(nn.Module):
    """Parameter layer: its one blob is its output."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(shape))

    def forward(self) -> torch.Tensor:
        return self.value


def im2col(x: torch.Tensor, kernel, dilation, pad, stride, sizes) -> torch.Tensor:
    """Caffe's Im2col: (N, C * kh * kw, H', W'), channel-major like ``F.unfold``."""
    cols = F.unfold(x, kernel, dilation=dilation, padding=pad, stride=stride)
    return cols.reshape(x.shape[0], cols.shape[1], *sizes)


def batch_reindex(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.index_select(0, index.long())


def filter_items(selector: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    keep = torch.nonzero(selector.reshape(selector.shape[0], -1)[:, 0] != 0).reshape(-1)
    return tuple(x.index_select(0, keep) for x in xs)


def crop(x: torch.Tensor, axis: int, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
    for i, (o, n) in enumerate(zip(offsets, sizes)):
        x = x.narrow(axis + i, o, n)
    return x


def _topk_caffe(x: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k along ``dim`` in Caffe's order: by value, ties to the larger index (it sorts
    (value, index) pairs descending)."""
    size = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = size
    # A stable descending sort of the reversed axis puts equal values' larger index first.
    flipped = x.flip(dim)
    values, order = torch.sort(flipped, dim=dim, descending=True, stable=True)
    index = (size - 1) - order
    return values.narrow(dim, 0, k), index.narrow(dim, 0, k)


def argmax_axis(x: torch.Tensor, k: int, axis: int, out_max_val: bool) -> torch.Tensor:
    values, index = _topk_caffe(x, k, axis)
    return values if out_max_val else index.to(x.dtype)


def argmax_flat(x: torch.Tensor, k: int, out_max_val: bool, ndim: int) -> torch.Tensor:
    """ArgMax without an axis: top k of each item's flattened values -> (N, 1 or 2, k, 1...):
    indices, then (with out_max_val) the values."""
    values, index = _topk_caffe(x.reshape(x.shape[0], -1), k, 1)
    parts = [index.to(x.dtype)] + ([values] if out_max_val else [])
    y = torch.stack(parts, dim=1)
    return y.reshape(*y.shape, *([1] * (ndim - 3)))


class CaffeNormalize(nn.Module):
    """SSD's Normalize: x / sqrt(sum x^2 + eps) * scale."""

    def __init__(self, shape: tuple[int, ...], across_spatial: bool, eps: float):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(shape))
        self.across_spatial = across_spatial
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim())) if self.across_spatial else (1,)
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + self.eps)
        scale = self.scale.reshape(1, -1, *([1] * (x.dim() - 2))) if self.scale.dim() else self.scale
        return x / norm * scale


def shuffle_channel(x: torch.Tensor, group: int) -> torch.Tensor:
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, group, c // group, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def upsample_nearest(x: torch.Tensor, scale_h: int, scale_w: int) -> torch.Tensor:
    return x.repeat_interleave(scale_h, dim=2).repeat_interleave(scale_w, dim=3)


def unpool(x: torch.Tensor, mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SegNet's Upsample: each value to the flat position h * width + w its mask names, zeros elsewhere."""
    n, c = x.shape[0], x.shape[1]
    out = x.new_zeros(n, c, height * width)
    index = mask.reshape(n, c, -1).long()
    return out.scatter(2, index, x.reshape(n, c, -1)).reshape(n, c, height, width)


def interp(x: torch.Tensor, crop_beg: int, h_in: int, w_in: int, h_out: int, w_out: int) -> torch.Tensor:
    """DeepLab's Interp: crop, then bilinear with the corners aligned (Caffe's caffe_cpu_interp2)."""
    x = x[:, :, crop_beg:crop_beg + h_in, crop_beg:crop_beg + w_in]
    if (h_in, w_in) == (h_out, w_out):
        return x
    return F.interpolate(x, size=(h_out, w_out), mode="bilinear", align_corners=True)


class CaffeBN(nn.Module):
    """SegNet / ENet BN with blobs scale and shift of shape (1, C, 1, 1)."""

    def __init__(self, channels: int, inference: bool, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.inference = inference
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.inference:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
            x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight + self.bias


def axpy(a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], a.shape[1], *([1] * (x.dim() - 2))) * x + y


class CaffeRecurrent(nn.Module):
    """BVLC's LSTM (gates i, f, o, g; c_t = cont * f * c + i * g; h_t = o * tanh(c_t)) or RNN
    (h_t = tanh(W_hh (cont * h) + W_xh x_t + b_h); o_t = tanh(W_ho h_t + b_o)), with cont_t = 0
    starting a new sequence. Blobs in Caffe's order and layout (W_xc, b_c, [W_xc_static], W_hc /
    W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o)."""

    def __init__(self, lstm: bool, names: list[str], shapes: list[tuple[int, ...]]):
        super().__init__()
        self.lstm = lstm
        self.names = list(names)
        for name, shape in zip(names, shapes):
            setattr(self, name, nn.Parameter(torch.zeros(shape)))

    def forward(self, x, cont, static=None, h0=None, c0=None):
        steps, streams = x.shape[0], x.shape[1]
        w_x, b_x = (self.W_xc, self.b_c) if self.lstm else (self.W_xh, self.b_h)
        pre = x.reshape(steps, streams, -1) @ w_x.t() + b_x
        if static is not None:
            w_s = self.W_xc_static if self.lstm else self.W_xh_static
            pre = pre + (static.reshape(streams, -1) @ w_s.t()).unsqueeze(0)
        hidden = self.W_hc.shape[1] if self.lstm else self.W_hh.shape[0]
        h = h0.reshape(streams, hidden) if h0 is not None else x.new_zeros(streams, hidden)
        c = c0.reshape(streams, hidden) if c0 is not None else x.new_zeros(streams, hidden)
        outs = []
        for t in range(steps):
            keep = cont[t].reshape(streams, 1)
            if self.lstm:
                gates = pre[t] + (keep * h) @ self.W_hc.t()
                i, f, o, g = gates.split(hidden, dim=1)
                c = keep * torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            else:
                h = torch.tanh(pre[t] + (keep * h) @ self.W_hh.t())
                outs.append(torch.tanh(h @ self.W_ho.t() + self.b_o))
        y = torch.stack(outs) if outs else x.new_zeros(0, streams, hidden)
        if h0 is None:
            return y
        return (y, h.unsqueeze(0), c.unsqueeze(0)) if self.lstm else (y, h.unsqueeze(0))
