"""Models and an engine-independent instrumentation for the TorchScript format tests.

Variances of a written file are measured here by copying its parameters into the eager
PyTorch model it came from and recording every conv / linear output at its first call with
forward hooks: no TorchScript graph reading, no fx, no engine code involved.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


class FitNet4Like(nn.Module):
    """17 3x3 convs with tanh in three pooled stages, then a linear classifier (CIFAR-sized)."""

    def __init__(self, widths=((16, 16, 16, 24, 24), (40,) * 6, (64,) * 6), classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for stage, stage_widths in enumerate(widths):
            for width in stage_widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.Tanh()]
                channels = width
            layers.append(nn.MaxPool2d(2) if stage < len(widths) - 1 else nn.AdaptiveMaxPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class ControlFlowNet(nn.Module):
    """A conv inside an ``if`` on the data, and a conv applied in a ``for`` loop (shared weight)."""

    def __init__(self, repeats: int = 3):
        super().__init__()
        self.repeats = repeats
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gate = nn.Conv2d(16, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.tanh(self.stem(x))
        if bool(x.abs().sum() > 0):  # depends on the data: TorchScript keeps a prim::If
            x = torch.relu(self.gate(x))
        else:
            x = x * 0.5
        for _ in range(self.repeats):  # a prim::Loop around a conv
            x = torch.tanh(self.body(x)) + x
        return self.head(x.mean((2, 3)))


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def first_use_stats(model: nn.Module, batch: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{module name: (variance, mean)} of each conv / linear output at its first call."""
    return _run_in_order(model, batch)[0]


def eager_with_weights(eager: nn.Module, script_module) -> nn.Module:
    """``eager`` carrying a loaded ScriptModule's parameters and buffers (same attribute names)."""
    eager.load_state_dict(script_module.state_dict())
    return eager.eval()


def naive_lsuv_dynamic(model: nn.Module, batch: torch.Tensor, *, tol=0.02, max_iter=20, target=1.0) -> list[str]:
    """The naive algorithm with the order found as it goes: one full forward pass per measurement.

    Each round runs the model, takes the first layer (in this run's execution order) not yet
    done and scales it, measuring with a full forward pass each time. Written for models
    whose control flow may change as weights change, as the exact semantics require.
    """
    done: list[str] = []
    seen_weights: set[int] = set()
    while True:
        stats, order = _run_in_order(model, batch)
        pending = [n for n in order if id(model.get_submodule(n).weight) not in seen_weights]
        if not pending:
            return done
        name = pending[0]
        module = model.get_submodule(name)
        seen_weights.add(id(module.weight))
        done.append(name)
        var = stats[name][0]
        for _ in range(max_iter):
            if abs(var - target) < tol or not math.isfinite(var) or var <= 0:
                break
            with torch.no_grad():
                module.weight.mul_(math.sqrt(target / var))
            var = _run_in_order(model, batch)[0][name][0]


def _run_in_order(model, batch):
    """({module name: (variance, mean)} of each conv / linear output at its first call, names in call order)."""
    order: list[str] = []
    stats: dict[str, tuple[float, float]] = {}
    handles = []

    def record(name, output):
        if name not in stats:
            order.append(name)
            out = output.detach().double()
            stats[name] = (float(out.var(unbiased=False)), float(out.mean()))

    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: record(n, o)))
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for h in handles:
            h.remove()
    return stats, order
