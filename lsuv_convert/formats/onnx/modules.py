"""Torch modules the ONNX plug-in puts into onnx2torch's graph.

Target modules hold the initializer *exactly as stored* as ``.weight`` (same shape, layout
and dtype), so save() writes it back without any transform; ONNX attributes (alpha, transB)
are applied in forward. They declare what the engine needs: ``lsuv_target``, the output dim
the bias broadcasts along, and a (groups, rows, fan_in) view in the layer's own fan layout.

The inference pins fix onnx2torch's silent error on BatchNormalization / Dropout: onnx2torch
returns its GraphModule in *training* mode, where nn.BatchNorm normalises with the batch's own
statistics and nn.Dropout drops, while the ONNX ops mean inference (running statistics, no
dropout). That is why torchvision densenet121, whose pre-activation BatchNorms the exporter
can't fold into a conv, converted "silently wrong". Pinned modules ignore ``.train()``.
"""

from __future__ import annotations

import torch
from torch import nn


class GemmTarget(nn.Module):
    """ONNX Gemm with weight B stored as in the file: ``alpha * op(A) @ op(B) + bias``.

    ``bias`` is ``beta * C`` (exactly C when beta == 1, the exporters' only value); a C that
    is not a per-output vector is kept apart as ``c`` (a module input) and is not initialized.
    """

    lsuv_target = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, alpha: float, trans_a: bool, trans_b: bool,
                 beta: float = 1.0, has_extra_c: bool = False):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.alpha = alpha
        self.beta = beta
        self.trans_a = trans_a
        self.trans_b = trans_b
        self.has_extra_c = has_extra_c

    @property
    def lsuv_channel_dim(self):
        # output = f(x, W) + bias only when nothing else is added
        return None if self.has_extra_c else 1

    def lsuv_grouped_view(self) -> torch.Tensor:
        w = self.weight if self.trans_b else self.weight.t()
        return w.unsqueeze(0)  # (1, out, in): rows are output features

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        a = x.t() if self.trans_a else x
        w = self.weight.t() if self.trans_b else self.weight
        out = a @ w
        if self.alpha != 1.0:
            out = out * self.alpha
        if self.bias is not None:
            out = out + self.bias.reshape(-1)
        if c is None:
            c = getattr(self, "c_const", None)
        if c is not None:
            out = out + c * self.beta
        return out


class MatMulTarget(nn.Module):
    """ONNX MatMul with a (in, out) initializer, plus the bias of a following Add if fused."""

    lsuv_target = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._out_rank = None

    @property
    def lsuv_channel_dim(self):
        # the engine asks after a forward: output features are the last dim, whatever the rank
        return None if self._out_rank is None else self._out_rank - 1

    def lsuv_grouped_view(self) -> torch.Tensor:
        return self.weight.t().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(x, self.weight)
        if self.bias is not None:
            out = out + self.bias
        self._out_rank = out.dim()
        return out


def _stay_in_eval(self, mode: bool = True):
    nn.Module.train(self, False)
    return self


# onnx2torch's modules that behave differently in training mode, and the ONNX ops they stand for
_TRAINING_SENSITIVE = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Dropout", "OnnxBatchNorm", "OnnxDropoutDynamic")
_pinned_classes: dict[type, type] = {}


def _pinned(cls: type) -> type:
    if cls not in _pinned_classes:
        _pinned_classes[cls] = type(f"Inference{cls.__name__}", (cls,), {"train": _stay_in_eval, "__module__": __name__})
    return _pinned_classes[cls]


def pin_inference(module: nn.Module) -> int:
    """Make every BatchNorm / Dropout of an onnx2torch graph ignore ``.train()``; returns how many."""
    count = 0
    for sub in module.modules():
        cls = type(sub)
        if cls.__name__ in _TRAINING_SENSITIVE and cls not in _pinned_classes.values():
            sub.__class__ = _pinned(cls)
            count += 1
    module.eval()
    return count
