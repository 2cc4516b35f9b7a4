"""torch.export programs (.pt2): converted through the CLI, re-loaded with torch.export.load in a
fresh process, every conv / linear output measured there by an fx Interpreter (no lsuv_convert code);
the same program, buffers and extra files, only parameter values changed, provenance as an extra file."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from checkpoint_helpers import assert_unit_variances, fresh_measure, tiny_transformer
from conftest import invoke
from lsuv_convert.formats import find_format


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist()}


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    work = tmp_path_factory.mktemp("pt2")
    rng = np.random.default_rng(0)
    np.save(work / "images.npy", rng.standard_normal((4, 3, 32, 32), dtype=np.float32))
    np.save(work / "tokens.npy", rng.standard_normal((6, 4, 8), dtype=np.float32))
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(resnet, (torch.randn(4, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(work / "resnet18.pt2"), extra_files={"labels.txt": "cat\ndog\n"})
    transformer = tiny_transformer().eval()
    ep = torch.export.export(transformer, (torch.randn(6, 4, 8),))
    torch.export.save(ep, str(work / "transformer.pt2"))
    procs = {name: invoke(work / f"{name}.pt2", "--data", work / data, "--log", work / f"{name}.json", "--device", "cpu")
             for name, data in (("resnet18", "images.npy"), ("transformer", "tokens.npy"))}
    return work, procs


@pytest.mark.slow
def test_programs_reload_in_a_fresh_process_with_unit_variances(programs):
    work, procs = programs
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, proc.stderr)
    results = fresh_measure([
        {"kind": "pt2", "path": work / "resnet18.lsuv.pt2", "batch": [work / "images.npy"], "extra": ["labels.txt"]},
        {"kind": "pt2", "path": work / "transformer.lsuv.pt2", "batch": [work / "tokens.npy"]},
    ])
    resnet = results[str(work / "resnet18.lsuv.pt2")]
    assert_unit_variances(resnet["vars"], least=21)
    assert resnet["extra"]["labels.txt"] == "cat\ndog\n"
    provenance = json.loads(resnet["extra"]["lsuv_convert.json"])
    assert provenance["tool"] == "lsuv-convert" and len(provenance["batch_sha256"]) == 64
    transformer = results[str(work / "transformer.lsuv.pt2")]["vars"]
    # packed q/k/v projection and out_proj of both layers are linear calls of the program: targets too
    assert {"encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.1.self_attn.out_proj.weight",
            "encoder.layers.0.linear1.weight", "inp.weight", "head.weight"} <= set(transformer)
    assert_unit_variances(transformer, least=10)


@pytest.mark.slow
def test_same_program_only_parameters_changed(programs):
    work, procs = programs
    assert procs["resnet18"].returncode == 0, procs["resnet18"].stderr
    before, after = _members(work / "resnet18.pt2"), _members(work / "resnet18.lsuv.pt2")
    assert set(after) - set(before) == {"extra/lsuv_convert.json"}
    differing = {k for k in before if before[k] != after[k]}
    # the serialized graph, signature, constants and sample inputs are byte-identical
    assert not {k for k in differing if not k.startswith("data/weights/weight_") and k != ".data/serialization_id"}
    a, b = torch.export.load(str(work / "resnet18.pt2")), torch.export.load(str(work / "resnet18.lsuv.pt2"))
    changed = {k for k in a.state_dict if not torch.equal(a.state_dict[k], b.state_dict[k])}
    convs = {k for k, v in a.state_dict.items() if k.endswith(".weight") and v.dim() == 4}
    assert changed == convs | {"fc.weight", "fc.bias"}
    log = json.loads((work / "resnet18.json").read_text())
    assert log["provenance"]["settings"]["pre_init"] == "orthonormal"


@pytest.mark.slow
def test_inspect_and_verify(programs):
    work, procs = programs
    assert procs["resnet18"].returncode == 0
    proc = invoke("inspect", work / "resnet18.lsuv.pt2", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "pt2" and info["inputs"][0]["shape"] == [None, 3, 32, 32]
    assert info["provenance"]["seed"] == 0 and len(info["targets"]) == 21
    proc = invoke("verify", work / "resnet18.lsuv.pt2", "--data", work / "images.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]


@pytest.mark.slow
def test_pt2_sniff_and_a_static_batch(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    ep = torch.export.export(Net().eval(), (torch.randn(2, 3, 8, 8),))
    torch.export.save(ep, str(tmp_path / "net.pt2"))
    assert find_format(tmp_path / "net.pt2").name == "pt2"
    proc = invoke(tmp_path / "net.pt2", "--device", "cpu")  # declared static shape: a synthetic batch of it
    assert proc.returncode == 0, proc.stderr
    np.save(tmp_path / "wrong.npy", np.random.default_rng(0).standard_normal((3, 3, 8, 8), dtype=np.float32))
    proc = invoke(tmp_path / "net.pt2", "--data", tmp_path / "wrong.npy", "--force", "-o", tmp_path / "x.pt2")
    assert proc.returncode == 1 and "batch size 3" in proc.stderr
    assert not (tmp_path / "x.pt2").exists()
