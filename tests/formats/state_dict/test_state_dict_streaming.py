"""A .safetensors state_dict of a torchvision model streamed (the default) against the same file
loaded whole (--no-stream): identical tensors (batch-norm statistics read from the file, fp16
kept), the same header order and metadata plus provenance; a factory's checkpoint is loaded
whole and says why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import invoke

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("accelerate")


def _checkpoint(path, dtype=torch.float32):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # statistics a fresh model does not have
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"source": "test"})
    return state


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.float16, marks=pytest.mark.slow)])
def test_streamed_checkpoint_equals_the_whole_load(tmp_path, dtype):
    from safetensors import safe_open

    src = tmp_path / "resnet.safetensors"
    stored = _checkpoint(src, dtype)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    logs, outputs = {}, {}
    for mode in ("--stream", "--no-stream"):
        out, log = tmp_path / f"out{mode}.safetensors", tmp_path / f"log{mode}.json"
        proc = invoke(src, "--arch", "torchvision:resnet18(num_classes=10)", "--data", data, "-o", out, "--log", log,
                      "--device", "cpu", mode)
        assert proc.returncode == 0, proc.stderr
        logs[mode] = json.loads(log.read_text())
        with safe_open(str(out), "pt") as fh:
            outputs[mode] = ({k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata())
    assert any(n.startswith("streamed:") for n in logs["--stream"]["notes"])
    (streamed, meta_s), (whole, meta_w) = outputs["--stream"], outputs["--no-stream"]
    assert list(streamed) == list(whole)
    for key in whole:
        assert streamed[key].dtype == whole[key].dtype == stored[key].dtype
        assert torch.equal(streamed[key], whole[key]), key
    assert torch.equal(streamed["bn1.running_mean"], stored["bn1.running_mean"])  # not a target: as stored
    assert not torch.equal(streamed["conv1.weight"], stored["conv1.weight"])
    assert meta_s["source"] == "test" and meta_s == meta_w
    assert [la["var_after"] for la in logs["--stream"]["layers"]] == [la["var_after"] for la in logs["--no-stream"]["layers"]]


FACTORY = '''
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
'''


def test_a_factory_checkpoint_is_loaded_whole_with_a_note(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    (tmp_path / "tiny_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    proc = invoke(tmp_path / "m.safetensors", "--arch", "tiny_factory:build", "--data", data, "--log",
                  tmp_path / "log.json", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = json.loads((tmp_path / "log.json").read_text())["notes"]
    assert any(n.startswith("loaded whole, not streamed: ") and "factory" in n for n in notes), notes
