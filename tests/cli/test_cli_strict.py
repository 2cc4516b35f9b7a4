"""--strict and the account on the command line: an unreachable branch fails the run with exit 3
and writes nothing (the log still says why); the console line and the summary show the counts."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import invoke

pytestmark = pytest.mark.slow  # TorchScript compiles on the first call: seconds


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.rare = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        x = self.norm(self.a(x))
        if bool(x.sum() > 1e9):
            x = self.rare(x)
        return x


def test_strict_fails_on_an_unreached_branch_and_writes_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Branchy()).save(str(tmp_path / "b.pt"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    r = invoke(tmp_path / "b.pt", "--data", tmp_path / "x.npy", "--strict", "--log", tmp_path / "log.json")
    assert r.returncode == 3 and "rare.weight" in r.stderr
    assert not (tmp_path / "b.lsuv.pt").exists()
    log = json.loads((tmp_path / "log.json").read_text())
    status = {e["name"]: e["status"] for e in log["account"]}
    assert status == {"a.weight": "initialized", "a.bias": "initialized", "rare.weight": "unreached",
                      "rare.bias": "unreached", "norm.weight": "skipped", "norm.bias": "skipped"}
    r = invoke(tmp_path / "b.pt", "--data", tmp_path / "x.npy")
    assert r.returncode == 0 and (tmp_path / "b.lsuv.pt").exists()
    assert "parameters: 2 initialized, 2 unreached, 2 skipped" in r.stderr


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_strict_passes_when_every_weight_is_initialized(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(Plain(), torch.randn(2, 8)).save(str(tmp_path / "p.pt"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    r = invoke(tmp_path / "p.pt", "--data", tmp_path / "x.npy", "--strict", "--log", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    log = json.loads((tmp_path / "p.json").read_text())
    assert log["counts"] == {"initialized": 4, "unreached": 0, "skipped": 0}
    assert sum(e["numel"] for e in log["account"]) == sum(p.numel() for p in Plain().parameters())
    assert all(abs(e["var_after"] - 1) < 0.02 for e in log["account"] if e["name"].endswith("weight"))
