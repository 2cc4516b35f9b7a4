"""--strict on a .pt2 program with an embedding and a norm: torch.export's rebuilt module hierarchy
has only plain ``Module`` owners, which say nothing of what a parameter is, so their matrices are
not taken for unknown linear layers; the program converts under --strict and reloads with unit
variance in its linear layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import invoke

pytestmark = pytest.mark.slow  # torch.export: about a second


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids):
        return self.fc(self.norm(self.embed(ids)))


def test_embedding_program_passes_strict(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (4, 6))
    torch.export.save(torch.export.export(Tokens().eval(), (ids,)), str(tmp_path / "tokens.pt2"))
    np.save(tmp_path / "ids.npy", ids.numpy())
    r = invoke(tmp_path / "tokens.pt2", "--data", tmp_path / "ids.npy", "--strict", "--log", tmp_path / "log.json")
    assert r.returncode == 0, r.stderr
    account = {e["name"]: e for e in json.loads((tmp_path / "log.json").read_text())["account"]}
    assert account["embed.weight"]["status"] == "skipped" and not account["embed.weight"].get("linear")
    module = torch.export.load(str(tmp_path / "tokens.lsuv.pt2")).module()
    with torch.no_grad():
        hidden = torch.nn.functional.layer_norm(module.embed.weight[ids], (8,), module.norm.weight, module.norm.bias)
        out = torch.nn.functional.linear(hidden, module.fc.weight, module.fc.bias)
    assert abs(float(out.double().var(unbiased=False)) - 1) < 0.02
