"""The ONNX plug-in times its stages in the log; the written model is still re-read and
measured by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from conftest import invoke
from onnx_helpers import check_written_model, export_module


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def test_every_stage_is_in_the_logs_seconds(tmp_path):
    torch.manual_seed(1)
    batch = torch.randn(8, 3, 8, 8)
    src = export_module(SmallNet(), batch, tmp_path / "net.onnx", "ts13")
    np.save(tmp_path / "batch.npy", batch.numpy())
    out, log_path = tmp_path / "out.onnx", tmp_path / "log.json"
    done = invoke(src, "--data", tmp_path / "batch.npy", "-o", out, "--log", log_path, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    check_written_model(src, out, batch.numpy())  # re-read and measured by onnxruntime
    seconds = json.loads(log_path.read_text())["seconds"]
    for stage in ("imports", "load", "load.imports", "load.parse", "load.conversion", "batch", "prepare",
                  "prepare.fidelity_gate", "pre_init", "lsuv", "save", "save.serialize", "save.final_check", "save.write"):
        assert seconds[stage] >= 0.0, stage
    top = sum(seconds[k] for k in ("imports", "load", "batch", "prepare", "pre_init", "lsuv", "save"))
    parts = sum(v for k, v in seconds.items() if k.startswith("save."))
    assert parts <= seconds["save"] + 1e-6 and top > 0
