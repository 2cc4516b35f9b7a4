"""state_dict checkpoints (.pth / .ckpt / .safetensors) with --arch: converted through the CLI, then
re-read in a fresh process with torch.load(weights_only=True) / safetensors, loaded into the
architecture and measured there with hooks; structure, keys, dtypes and non-tensor entries as in
the input. Also: the format is found by content, files that need a full unpickle are refused
without running anything, and key mismatches are named."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from checkpoint_helpers import assert_unit_variances, fresh_measure, tiny_transformer
from conftest import invoke
from lsuv_convert.errors import ModelFormatError
from lsuv_convert.formats import find_format, get_format


def _resnet_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """resnet18 as a bare .pth, a Lightning-style nested .ckpt (fp16 weights) and .safetensors; the
    tiny transformer as a DataParallel-prefixed .pth; each converted once by the CLI."""
    from safetensors.torch import save_file

    work = tmp_path_factory.mktemp("state_dict")
    rng = np.random.default_rng(0)
    np.save(work / "images.npy", rng.standard_normal((4, 3, 32, 32), dtype=np.float32))
    np.save(work / "tokens.npy", rng.standard_normal((6, 4, 8), dtype=np.float32))
    sd = _resnet_state()
    torch.save(sd, work / "bare.pth")
    nested = {"epoch": 7, "global_step": 70, "state_dict": {"model." + k: (v.half() if v.is_floating_point() else v)
                                                            for k, v in sd.items()},
              "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
              "hyper_parameters": {"lr": 0.1, "name": "run-3"}, "note": None}
    torch.save(nested, work / "nested.ckpt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(work / "weights.safetensors"), metadata={"source": "test"})
    torch.save({"module." + k: v for k, v in tiny_transformer().state_dict().items()}, work / "transformer.pth")
    cases = {
        "bare.pth": ("torchvision:resnet18", "images.npy"),
        "nested.ckpt": ("torchvision:resnet18", "images.npy"),
        "weights.safetensors": ("torchvision:resnet18", "images.npy"),
        "transformer.pth": ("checkpoint_helpers:tiny_transformer", "tokens.npy"),
    }
    procs = {}
    for name, (arch, data) in cases.items():
        procs[name] = invoke(work / name, "--arch", arch, "--data", work / data, "--log", work / f"{name}.json",
                             "--device", "cpu")
    return work, cases, procs


@pytest.mark.slow
def test_checkpoints_convert_and_reload_in_a_fresh_process(converted):
    work, cases, procs = converted
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, proc.stderr)
    jobs = [
        {"kind": "torch", "path": work / "bare.lsuv.pth", "arch": "torchvision:resnet18", "batch": [work / "images.npy"]},
        {"kind": "torch", "path": work / "nested.lsuv.ckpt", "arch": "torchvision:resnet18", "batch": [work / "images.npy"],
         "where": ["state_dict"], "prefix": "model."},
        {"kind": "safetensors", "path": work / "weights.lsuv.safetensors", "arch": "torchvision:resnet18",
         "batch": [work / "images.npy"]},
        {"kind": "torch", "path": work / "transformer.lsuv.pth", "arch": "checkpoint_helpers:tiny_transformer",
         "batch": [work / "tokens.npy"], "prefix": "module."},
        {"kind": "torch", "path": work / "nested.ckpt", "arch": "torchvision:resnet18", "batch": [work / "images.npy"],
         "where": ["state_dict"], "prefix": "model."},
    ]
    results = fresh_measure(jobs)
    for job in jobs[:3]:
        # every conv and the fc of resnet18 (20 convs + fc), measured by the fresh process's own hooks
        assert_unit_variances(results[str(job["path"])]["vars"], least=21)
    transformer = results[str(work / "transformer.lsuv.pth")]["vars"]
    assert {"inp", "head", "encoder.layers.0.linear1", "encoder.layers.1.linear2"} <= set(transformer)
    assert_unit_variances(transformer, least=6)
    # same structure, keys, dtypes (fp16 stays fp16) and non-tensor entries as the input
    assert results[str(work / "nested.lsuv.ckpt")]["structure"] == results[str(work / "nested.ckpt")]["structure"]
    metadata = results[str(work / "weights.lsuv.safetensors")]["metadata"]
    assert metadata["source"] == "test" and metadata["lsuv_convert.tool"] == "lsuv-convert"
    assert len(metadata["lsuv_convert.batch_sha256"]) == 64


@pytest.mark.slow
def test_only_target_tensors_change(converted):
    work, _, procs = converted
    assert procs["bare.pth"].returncode == 0
    before = torch.load(work / "bare.pth", weights_only=True)
    after = torch.load(work / "bare.lsuv.pth", weights_only=True)
    assert list(before) == list(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    convs = {k for k in before if k.endswith(".weight") and before[k].dim() == 4}
    assert changed == convs | {"fc.weight", "fc.bias"}
    assert all(before[k].dtype == after[k].dtype for k in before)
    log = json.loads((work / "bare.pth.json").read_text())
    assert log["provenance"]["seed"] == 0 and log["provenance"]["settings"]["tol"] == 0.02
    # verify: the named architecture built afresh with the written weights
    proc = invoke("verify", work / "bare.lsuv.pth", "--arch", "torchvision:resnet18", "--data", work / "images.npy",
                  "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]


@pytest.mark.slow
def test_inspect_shows_safetensors_provenance(converted):
    work, _, procs = converted
    assert procs["weights.safetensors"].returncode == 0
    proc = invoke("inspect", work / "weights.lsuv.safetensors", "--arch", "torchvision:resnet18", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "state_dict"
    assert info["provenance"]["tool"] == "lsuv-convert" and info["provenance"]["seed"] == 0
    assert len(info["targets"]) == 21


def test_key_mismatch_names_the_keys(tmp_path):
    sd = _resnet_state()
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(2)
    torch.save({"model": sd, "epoch": 1}, tmp_path / "broken.pth")
    with pytest.raises(ModelFormatError) as info:
        find_format(tmp_path / "broken.pth").load(tmp_path / "broken.pth", arch="torchvision:resnet18")
    message = str(info.value)
    assert "layer1.0.conv1.weight" in message and "extra.weight" in message and "['model']" in message


@pytest.mark.slow
def test_wrong_architecture_and_unknown_names(tmp_path):
    torch.save(_resnet_state(), tmp_path / "r18.pth")
    fmt = find_format(tmp_path / "r18.pth")
    with pytest.raises(ModelFormatError, match="missing from the file"):
        fmt.load(tmp_path / "r18.pth", arch="torchvision:resnet34")
    with pytest.raises(ModelFormatError, match="did you mean resnet18"):
        fmt.load(tmp_path / "r18.pth", arch="torchvision:resnet81")
    with pytest.raises(ModelFormatError, match="do not fit"):
        fmt.load(tmp_path / "r18.pth", arch="torchvision:resnet18(num_classes=10)")
    with pytest.raises(ModelFormatError, match="--arch"):
        fmt.load(tmp_path / "r18.pth")


def test_formats_are_found_by_content(tmp_path):
    import torch.nn as nn

    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "b.bin", _use_new_zipfile_serialization=False)
    scripted = torch.jit.script(nn.Linear(2, 2))
    torch.jit.save(scripted, str(tmp_path / "c.pt"))
    assert find_format(tmp_path / "a.pt").name == "state_dict"
    assert find_format(tmp_path / "b.bin").name == "state_dict"
    assert find_format(tmp_path / "c.pt").name == "torchscript"
    assert not get_format("state_dict").sniff(tmp_path / "c.pt")


def _evil_class(marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Evil


@pytest.mark.parametrize("how", ["pickle", "torch.save", "zip"])
def test_a_pickle_payload_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    evil = _evil_class(marker)()
    path = tmp_path / "evil.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": evil}))
    elif how == "torch.save":
        torch.save({"w": torch.zeros(2), "payload": evil}, path)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("evil/data.pkl", pickle.dumps(evil))
    before = path.read_bytes()
    proc = invoke(path, "--arch", "torchvision:resnet18", "--input-shape", "2,3,16,16")
    assert proc.returncode == 1
    # every pickle is read (opcodes only) before torch.load: the zip's too, whatever else it lacks
    assert "unpickle" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("lsuv-convert: error")]) == 1
    assert not marker.exists()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]
