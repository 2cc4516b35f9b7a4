"""Regenerate the sample models and their batches: python sample_models/make_samples.py

- fitnet1.onnx + fitnet1.npy: a FitNet-1-like CIFAR net (Table 1 of the paper: maxout with two
  pieces as two convs and an elementwise max), exported with torch's TorchScript-based exporter.
- small_tanh.pt + small_tanh.npy: a small scripted conv net with tanh (TorchScript).
- fitnet_mnist.npy: 64 digits (scikit-learn's load_digits, upsampled to 28x28) for
  fitnet_mnist.prototxt, which is written by hand.
Deterministic: the same torch/numpy give the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class Maxout2(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, padding=1)
        self.b = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return torch.maximum(self.a(x), self.b(x))


class FitNet1(nn.Module):
    """FitNet-1 (250K parameters): 3x16, pool, 3x32, pool, 2x48 + 64, global pool, fc-500, fc-10."""

    def __init__(self):
        super().__init__()
        widths = [(3, 16), (16, 16), (16, 16), "pool", (16, 32), (32, 32), (32, 32), "pool",
                  (32, 48), (48, 48), (48, 64)]
        self.features = nn.Sequential(*[nn.MaxPool2d(2) if w == "pool" else Maxout2(*w) for w in widths])
        self.fc1 = nn.Linear(64, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


class SmallTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1) for i in range(6)])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        for conv in self.convs:
            x = torch.tanh(conv(x))
        return self.head(x.mean((2, 3)))


def smooth_images(n: int, channels: int, size: int, seed: int) -> np.ndarray:
    """Low-pass random images: spatially correlated like photos, zero mean, unit variance."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.standard_normal((n, channels, size // 4, size // 4), dtype=np.float32))
    img = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    img = img + 0.1 * torch.from_numpy(rng.standard_normal(img.shape, dtype=np.float32))
    return ((img - img.mean()) / img.std()).numpy().astype(np.float32)


def digits_batch(n: int = 64) -> np.ndarray:
    from sklearn.datasets import load_digits

    digits = load_digits().images[:n].astype(np.float32) / 16.0
    up = nn.functional.interpolate(torch.from_numpy(digits)[:, None], size=(28, 28), mode="bilinear",
                                   align_corners=False)
    return up.numpy().astype(np.float32)


def main() -> None:
    torch.manual_seed(0)
    fitnet = FitNet1().eval()
    torch.onnx.export(fitnet, (torch.zeros(1, 3, 32, 32),), str(HERE / "fitnet1.onnx"), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    np.save(HERE / "fitnet1.npy", smooth_images(32, 3, 32, seed=1))

    torch.jit.save(torch.jit.script(SmallTanh().eval()), str(HERE / "small_tanh.pt"))
    np.save(HERE / "small_tanh.npy", smooth_images(16, 3, 32, seed=2))

    np.save(HERE / "fitnet_mnist.npy", digits_batch())


if __name__ == "__main__":
    main()
