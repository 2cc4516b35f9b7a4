"""TorchScript end to end through the real console script.

For each model: exported with torch.jit (traced or scripted), initialized by
``lsuv-convert``, the written file loaded fresh with ``torch.jit.load``, its parameters
copied into the eager model, and every conv / linear output's variance on the batch
measured with forward hooks (no engine code involved) must be within tol of 1. The
forward code and the buffers of the output must be those of the input.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from torchscript_helpers import ControlFlowNet, FitNet4Like, eager_with_weights, first_use_stats, layer_names

TOL = 0.02
warnings.filterwarnings("ignore", category=FutureWarning)

MODELS = {
    # name: (builder, export mode, batch shape, expected engine path)
    # 32x32 images keep every torchvision network valid (1x1 at the end) and the test fast.
    "resnet18-traced": (lambda: torchvision.models.resnet18(weights=None), "trace", (8, 3, 32, 32), "fx"),
    "resnet18-scripted": (lambda: torchvision.models.resnet18(weights=None), "script", (8, 3, 32, 32), "fx"),
    "mobilenet_v3_small-scripted": (lambda: torchvision.models.mobilenet_v3_small(weights=None), "script", (8, 3, 32, 32), "fx"),
    "densenet121-traced": (lambda: torchvision.models.densenet121(weights=None), "trace", (4, 3, 32, 32), "fx"),
    "convnext_tiny-traced": (lambda: torchvision.models.convnext_tiny(weights=None), "trace", (4, 3, 32, 32), "fx"),
    "fitnet4-tanh-scripted": (FitNet4Like, "script", (16, 3, 32, 32), "fx"),
    "control-flow-scripted": (ControlFlowNet, "script", (8, 3, 32, 32), "hooks"),
}
SLOW = {"densenet121-traced", "convnext_tiny-traced", "resnet18-traced"}


def export(model, mode: str, shape, path: Path) -> torch.jit.ScriptModule:
    model.eval()
    with torch.no_grad():
        module = torch.jit.script(model) if mode == "script" else torch.jit.trace(model, torch.randn(1, *shape[1:]), check_trace=False)
    torch.jit.save(module, str(path))
    return torch.jit.load(str(path))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]
)
def test_cli_initializes_torchscript(name, tmp_path, cli):
    build, mode, shape, path_kind = MODELS[name]
    torch.manual_seed(0)
    source = tmp_path / f"{name}.pt"
    original = export(build(), mode, shape, source)
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    out, log = tmp_path / "out.pt", tmp_path / "log.json"

    result = cli(source, "--data", tmp_path / "batch.npy", "-o", out, "--log", log, "--seed", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr

    written = torch.jit.load(str(out))
    assert written.code == original.code
    for (key, before), (key2, after) in zip(original.named_buffers(), written.named_buffers(), strict=True):
        assert key == key2 and torch.equal(before, after), key

    eager = eager_with_weights(build(), written)
    stats = first_use_stats(eager, torch.from_numpy(batch))
    assert set(stats) == set(layer_names(eager))
    off = {n: v for n, (v, _) in stats.items() if abs(v - 1.0) >= TOL + 1e-4}
    assert not off, f"layers off target: {off}"

    entries = json.loads(log.read_text())
    assert entries["format"] == "torchscript"
    assert [e["name"] for e in entries["layers"]] == list(stats)  # attribute paths, execution order
    assert all(e["converged"] for e in entries["layers"])
    assert entries["walker"].startswith(path_kind)
    note = next(n for n in entries["notes"] if n.startswith("engine path:"))
    if path_kind == "hooks":  # the log says why the exact path was taken, and the loop's shared use
        assert "interpreter" in note and "gate" in note and "body" in note
        body = next(e for e in entries["layers"] if e["name"] == "body")
        assert "used 3 times" in body["note"]


# -- bad input: clear one-line error each, exit != 0, no output file ---------------------------


def _newer_torch_copy(source: Path, dest: Path) -> None:
    """``source`` with the file format version a future torch would write."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith(("/version", "/.data/version")):
                data = b"99\n"
            dst.writestr(info, data)


def _future_op_copy(source: Path, dest: Path) -> None:
    """``source`` whose code calls an op this torch doesn't have, as a newer torch's file may."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py") and b"torch.tanh(" in data:
                data = data.replace(b"torch.tanh(", b"torch.ops.aten.tanh_from_the_future(", 1)
            dst.writestr(info, data)


def test_bad_inputs_fail_cleanly_and_write_nothing(tmp_path, cli):
    good = tmp_path / "good.pt"
    export(ControlFlowNet(), "script", (2, 3, 16, 16), good)
    torch.save(ControlFlowNet().state_dict(), tmp_path / "state_dict.pt")
    torch.save(ControlFlowNet().state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(tmp_path / "random.pt", "w") as zf:
        zf.writestr("notes/readme.txt", "hello")
        zf.writestr("notes/data.bin", bytes(range(256)))
    _newer_torch_copy(good, tmp_path / "newer.pt")
    _future_op_copy(good, tmp_path / "future_op.pt")
    # 1 channel where the model takes 3: only running the model can tell.
    np.save(tmp_path / "wrong_shape.npy", np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32))
    expected = {
        "state_dict.pt": "--arch",  # taken by the state_dict plug-in, which needs the architecture
        "legacy.pth": "--arch",
        "random.pt": "not a TorchScript archive",
        "newer.pt": "written by a newer PyTorch",
        "future_op.pt": "does not compile with torch",
        "good.pt": "cannot run on the batch of shape (2, 1, 16, 16)",
    }
    out = tmp_path / "out"
    result = cli(*[tmp_path / n for n in expected], "--data", tmp_path / "wrong_shape.npy", "--output-dir", out,
                 "--json", "--device", "cpu")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    outcomes = {Path(o["model"]).name: o for o in map(json.loads, result.stdout.splitlines())}
    for name, says in expected.items():
        assert outcomes[name]["status"] == "failed"
        assert says in outcomes[name]["error"], outcomes[name]["error"]
        assert says in result.stderr
    assert not out.exists() or not any(out.rglob("*"))  # no output, no temporary file


def test_missing_data_asks_for_it(tmp_path, cli):
    model = tmp_path / "net.pt"
    export(ControlFlowNet(), "script", (2, 3, 16, 16), model)
    result = cli(model, "-o", tmp_path / "o.pt", "--device", "cpu")
    assert result.returncode != 0
    assert "--data" in result.stderr and "--input-shape" in result.stderr
    assert not (tmp_path / "o.pt").exists()
