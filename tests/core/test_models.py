"""lsuv_init on real architectures: every target's output variance, measured by hooks
independent of the engine, is within tol of 1 afterwards."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lsuv_convert import lsuv_init
from lsuv_convert.lsuv.targets import is_layer
from naive_lsuv import hook_variances

TOL = 0.02


def tanh_chain(depth=30, width=16):
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), (8, 3, 64, 64)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(weights=None), (8, 3, 64, 64)),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None), (4, 3, 64, 64)),
    "vgg11": (lambda: torchvision.models.vgg11(weights=None), (4, 3, 64, 64)),
    "tanh_chain30": (tanh_chain, (8, 3, 16, 16)),
}


SLOW = {"vgg11"}  # 130 M parameters: the pre-init alone takes seconds


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(MODELS)])
def test_every_layer_has_unit_variance(name):
    torch.manual_seed(0)
    build, shape = MODELS[name]
    model = build()
    batch = torch.randn(shape)
    report = lsuv_init(model, batch, seed=0, device="cpu")
    targets = [n for n, m in model.named_modules() if is_layer(m)]
    assert len(report.layers) == len(targets)
    assert all(layer.converged for layer in report.layers)
    measured = hook_variances(model.eval(), batch, targets)
    off = {n: v for n, v in measured.items() if abs(v - 1.0) >= TOL}
    assert not off, f"layers off target: {off}"
