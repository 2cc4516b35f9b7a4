"""Elementwise activations and their kin: ReLU (leaky), PReLU, ELU, TanH, Sigmoid, AbsVal, BNLL, Power,
Dropout (inference), Softmax, Threshold, Exp, Log, Clip, Swish, ReLU6.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import modules as M
from ..context import Blob, LayerContext
from .common import axis_index, channel_parameter, check_bottoms, filler_or
from .registry import converter


def _unary(ctx: LayerContext, bottoms: list[Blob], fn, *args, **kwargs) -> list[Blob]:
    check_bottoms(ctx, bottoms, 1)
    x = bottoms[0]
    return [Blob(ctx.call(fn, x.node, *args, **kwargs), x.shape)]


@converter("ReLU")
def relu(ctx, bottoms):
    slope = ctx.layer.relu_param.negative_slope
    if slope:
        return _unary(ctx, bottoms, F.leaky_relu, slope)
    return _unary(ctx, bottoms, F.relu)


@converter("PReLU")
def prelu(ctx, bottoms):
    p = ctx.layer.prelu_param
    return channel_parameter(ctx, bottoms, "PReLU", p.channel_shared,
                              lambda channels, shape: M.CaffePReLU(channels, p.channel_shared),
                              "slope", "weight", filler_or(p, "filler", 0.25))


@converter("ELU")
def elu(ctx, bottoms):
    return _unary(ctx, bottoms, F.elu, ctx.layer.elu_param.alpha)


@converter("TanH")
def tanh(ctx, bottoms):
    return _unary(ctx, bottoms, torch.tanh)


@converter("Sigmoid")
def sigmoid(ctx, bottoms):
    return _unary(ctx, bottoms, torch.sigmoid)


@converter("AbsVal")
def absval(ctx, bottoms):
    return _unary(ctx, bottoms, torch.abs)


@converter("BNLL")
def bnll(ctx, bottoms):
    return _unary(ctx, bottoms, F.softplus)


@converter("Power")
def power(ctx, bottoms):
    p = ctx.layer.power_param
    return _unary(ctx, bottoms, M.power, p.power, p.scale, p.shift)


@converter("Dropout")
def dropout(ctx, bottoms):
    p = ctx.layer.dropout_param
    check_bottoms(ctx, bottoms, 1)
    if not 0.0 <= p.dropout_ratio < 1.0:
        raise ctx.error(f"dropout_ratio must be in [0, 1), got {p.dropout_ratio}")
    if p.HasField("scale_train") and not p.scale_train:
        # Forks' scale_train: false leaves training outputs unscaled and scales at test time.
        return _unary(ctx, bottoms, M.scaled, 1.0 - p.dropout_ratio)
    return [bottoms[0]]  # identity in the TEST phase


@converter("Softmax")
def softmax(ctx, bottoms):
    check_bottoms(ctx, bottoms, 1)
    axis = axis_index(ctx, ctx.layer.softmax_param.axis, len(bottoms[0].shape))
    return _unary(ctx, bottoms, F.softmax, dim=axis)


@converter("Threshold")
def threshold(ctx, bottoms):
    return _unary(ctx, bottoms, M.threshold, float(ctx.layer.threshold_param.threshold))


@converter("Exp")
def exp(ctx, bottoms):
    p = ctx.layer.exp_param
    if p.base != -1 and p.base <= 0:
        raise ctx.error(f"base must be -1 (e) or positive, got {p.base}")
    log_base = 1.0 if p.base == -1 else math.log(p.base)
    return _unary(ctx, bottoms, M.exp_layer, log_base * p.scale, log_base * p.shift)


@converter("Log")
def log(ctx, bottoms):
    p = ctx.layer.log_param
    if p.base != -1 and (p.base <= 0 or p.base == 1):
        raise ctx.error(f"base must be -1 (e) or positive and not 1, got {p.base}")
    inv_log_base = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
    return _unary(ctx, bottoms, M.log_layer, p.scale, p.shift, inv_log_base)


@converter("Clip")
def clip(ctx, bottoms):
    p = ctx.layer.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise ctx.error("Clip needs both clip_param min and max")
    if p.min > p.max:
        raise ctx.error(f"min {p.min} is above max {p.max}")
    return _unary(ctx, bottoms, torch.clamp, float(p.min), float(p.max))


@converter("Swish")
def swish(ctx, bottoms):
    return _unary(ctx, bottoms, M.swish, float(ctx.layer.swish_param.beta))


@converter("ReLU6")
def relu6(ctx, bottoms):
    return _unary(ctx, bottoms, F.hardtanh, 0.0, 6.0)
