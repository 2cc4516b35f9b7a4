"""Save re-runs onnxruntime only where the gate's round trip of the source tensors through the
writer's mapping proves nothing; the stages are timed in the log."""

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


def _convert(tmp_path, net: nn.Module, *extra: str) -> tuple[dict, np.ndarray]:
    torch.manual_seed(0)
    batch = torch.randn(8, 3, 8, 8)
    src = export_module(net, batch, tmp_path / "net.onnx", "ts13")
    np.save(tmp_path / "batch.npy", batch.numpy())
    out, log = tmp_path / "out.onnx", tmp_path / "log.json"
    done = invoke(src, "--data", tmp_path / "batch.npy", "-o", out, "--log", log, "--device", "cpu", *extra)
    assert done.returncode == 0, done.stderr
    check_written_model(src, out, batch.numpy())  # re-read and measured by onnxruntime
    return json.loads(log.read_text()), batch.numpy()


def test_informative_weights_skip_the_second_onnxruntime_run(tmp_path):
    torch.manual_seed(1)
    log, _ = _convert(tmp_path, SmallNet())
    seconds = log["seconds"]
    assert "save.final_check" not in seconds
    for stage in ("imports", "load", "load.parse", "load.conversion", "prepare.fidelity_gate", "pre_init", "lsuv",
                  "save", "save.serialize", "save.write"):
        assert seconds[stage] >= 0.0, stage


def test_a_constant_source_tensor_written_otherwise_is_checked_at_save(tmp_path):
    torch.manual_seed(1)
    net = SmallNet()
    with torch.no_grad():
        net.conv2.bias.zero_()  # a zero bias says nothing about the writer's mapping
    log, _ = _convert(tmp_path, net, "--center")  # and --center makes the written bias non-zero
    assert "save.final_check" in log["seconds"]


def test_zero_biases_written_as_zeros_need_no_second_run(tmp_path):
    torch.manual_seed(1)
    net = SmallNet()
    with torch.no_grad():
        for layer in (net.conv1, net.conv2, net.fc):
            layer.bias.zero_()  # as in an untrained export with folded BatchNorm
    log, _ = _convert(tmp_path, net)  # the orthonormal pre-init writes zeros back
    assert "save.final_check" not in log["seconds"]
