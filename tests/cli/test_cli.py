"""The console script over model zoos: many formats in one run, Make-like skipping, --json,
determinism, verify, a real Makefile with make -j2, and the sample models of the README."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CONSOLE_SCRIPT, REPO, run_cli

SAMPLES = REPO / "sample_models"
SAMPLE_FILES = ["fitnet1.onnx", "fitnet1.npy", "fitnet_mnist.prototxt", "fitnet_mnist.npy", "small_tanh.pt",
                "small_tanh.npy"]
OUTPUTS = ["fitnet1.lsuv.onnx", "fitnet_mnist.lsuv.caffemodel", "small_tanh.lsuv.pt"]


@pytest.fixture
def zoo(tmp_path) -> Path:
    """A folder holding one model of each format with its sample batch, in sub-folders."""
    root = tmp_path / "zoo"
    folders = {"fitnet1": "onnx", "fitnet_mnist": "caffe", "small_tanh": "ts"}
    for name in SAMPLE_FILES:
        dest = root / folders[name.rsplit(".", 1)[0]]
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / name, dest / name)
    return root


def test_help_and_version_are_instant():
    for args in (["--help"], ["--version"]):
        start = time.perf_counter()
        proc = run_cli(*args)
        elapsed = time.perf_counter() - start
        assert proc.returncode == 0
        assert elapsed < 2.0  # the budget of 0.3 s is checked without torch import below
    probe = subprocess.run([shutil.which("python") or "python", "-c",
                            "import sys, lsuv_convert.command.cli; print('torch' in sys.modules, 'onnx' in sys.modules)"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == ["False", "False"]


def test_zoo_in_one_run_with_output_dir_and_json(zoo, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(zoo, "--output-dir", out, "--json", "--log", tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(Path(line["model"]).name for line in lines) == ["fitnet1.onnx", "fitnet_mnist.prototxt", "small_tanh.pt"]
    assert all(line["status"] == "ok" and line["layers"] > 0 for line in lines)
    assert (out / "onnx" / "fitnet1.lsuv.onnx").is_file()
    assert (out / "caffe" / "fitnet_mnist.lsuv.caffemodel").is_file()
    assert (out / "ts" / "small_tanh.lsuv.pt").is_file()
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == sorted(o + ".json" for o in OUTPUTS)
    log = json.loads((tmp_path / "logs" / "fitnet1.lsuv.onnx.json").read_text())
    assert log["format"] == "onnx" and log["settings"]["tol"] == 0.02
    assert all(abs(layer["var_after"] - 1) < 0.02 for layer in log["layers"])
    assert "fitnet1.npy" in log["data"]  # the sample batch beside the model was used


def test_broken_model_does_not_stop_the_others(zoo):
    (zoo / "onnx" / "broken.onnx").write_bytes(b"\x08\x07garbage")
    proc = run_cli(zoo)
    assert proc.returncode == 1
    for out in ("onnx/fitnet1.lsuv.onnx", "caffe/fitnet_mnist.lsuv.caffemodel", "ts/small_tanh.lsuv.pt"):
        assert (zoo / out).is_file()
    assert not (zoo / "onnx" / "broken.lsuv.onnx").exists()
    assert "failed: " in proc.stderr and "broken.onnx" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_fail_fast_stops_at_first_failure(zoo):
    (zoo / "caffe" / "aaa.prototxt").write_text("layer { name: 'x' type: 'NoSuchLayer' bottom: 'data' top: 'x' }\n")
    proc = run_cli(zoo / "caffe", "--fail-fast")
    assert proc.returncode == 1
    assert not (zoo / "caffe" / "fitnet_mnist.lsuv.caffemodel").exists()


def test_rerun_skips_up_to_date_outputs_and_force_rebuilds(zoo):
    assert run_cli(zoo).returncode == 0
    out = zoo / "onnx" / "fitnet1.lsuv.onnx"
    stamp = out.stat().st_mtime_ns
    again = run_cli(zoo)
    assert again.returncode == 0 and again.stderr.count("(up to date;") == 3
    assert out.stat().st_mtime_ns == stamp
    (zoo / "onnx" / "fitnet1.onnx").touch()  # same content: still up to date (the record compares contents)
    assert run_cli(zoo).stderr.count("(up to date;") == 3
    batch = zoo / "onnx" / "fitnet1.npy"
    np.save(batch, np.load(batch) * 2)  # another batch makes it stale
    stale = run_cli(zoo, "--json")
    statuses = {Path(json.loads(line)["model"]).name: json.loads(line)["status"] for line in stale.stdout.splitlines()}
    assert statuses == {"fitnet1.onnx": "ok", "fitnet_mnist.prototxt": "skipped", "small_tanh.pt": "skipped"}
    forced = run_cli(zoo, "--force", "--json")
    assert all(json.loads(line)["status"] == "ok" for line in forced.stdout.splitlines())


def test_outputs_are_byte_identical_across_runs(zoo, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(zoo, "--output-dir", a).returncode == 0
    assert run_cli(zoo, "--output-dir", b).returncode == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.mark.slow  # real processes under make -j
def test_makefile_with_parallel_make(zoo, tmp_path):
    work = tmp_path / "make"
    work.mkdir()
    for name in ("fitnet1.onnx", "fitnet1.npy", "small_tanh.pt", "small_tanh.npy"):
        shutil.copy(SAMPLES / name, work / name)
    shutil.copy(SAMPLES / "fitnet1.onnx", work / "second.onnx")
    shutil.copy(SAMPLES / "fitnet1.npy", work / "batch.npy")
    (work / "Makefile").write_text(
        f"LSUV := {CONSOLE_SCRIPT}\n"
        "all: fitnet1.lsuv.onnx second.lsuv.onnx small_tanh.lsuv.pt\n"
        "%.lsuv.onnx: %.onnx batch.npy\n\t$(LSUV) $< --data batch.npy -o $@ -q\n"
        "%.lsuv.pt: %.pt %.npy\n\t$(LSUV) $< --data $*.npy -o $@ -q\n")
    first = subprocess.run(["make", "-j2"], cwd=work, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    for target in ("fitnet1.lsuv.onnx", "second.lsuv.onnx", "small_tanh.lsuv.pt"):
        assert (work / target).is_file()
    second = subprocess.run(["make", "-j2"], cwd=work, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0 and "Nothing to be done" in second.stdout


def test_verify_passes_then_catches_weights_scaled_afterwards(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = tmp_path / "fitnet1.onnx"
    shutil.copy(SAMPLES / "fitnet1.onnx", model)
    shutil.copy(SAMPLES / "fitnet1.npy", tmp_path / "batch.npy")
    assert run_cli(model, "--data", tmp_path / "batch.npy").returncode == 0
    out = tmp_path / "fitnet1.lsuv.onnx"
    ok = run_cli("verify", out, "--data", tmp_path / "batch.npy", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    proto = onnx.load(str(out))
    first_conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    for init in proto.graph.initializer:
        if init.name == first_conv.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
    onnx.save(proto, str(out))
    bad = run_cli("verify", out, "--data", tmp_path / "batch.npy")
    assert bad.returncode != 0
    assert "out of tolerance" in bad.stderr and "Traceback" not in bad.stderr


def test_verify_caffe_from_the_written_caffemodel(tmp_path):
    for name in ("fitnet_mnist.prototxt", "fitnet_mnist.npy"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    assert run_cli(tmp_path / "fitnet_mnist.prototxt").returncode == 0
    proc = run_cli("verify", tmp_path / "fitnet_mnist.lsuv.caffemodel", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["layers"]) == 13


def test_inspect_lists_targets_without_writing(tmp_path):
    shutil.copy(SAMPLES / "fitnet1.onnx", tmp_path / "m.onnx")
    proc = run_cli("inspect", tmp_path / "m.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["inputs"][0]["shape"][1:] == [3, 32, 32]
    assert len(info["targets"]) == 20 and info["targets"][0]["op"] == "Conv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_plot_is_written(tmp_path):
    shutil.copy(SAMPLES / "small_tanh.pt", tmp_path / "m.pt")
    np.save(tmp_path / "b.npy", np.random.default_rng(0).standard_normal((8, 3, 16, 16), dtype=np.float32))
    proc = run_cli(tmp_path / "m.pt", "--data", tmp_path / "b.npy", "--plot", tmp_path / "v.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_npz_and_image_folder_data(tmp_path):
    from PIL import Image

    shutil.copy(SAMPLES / "fitnet1.onnx", tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "b.npz", input=rng.standard_normal((4, 3, 32, 32), dtype=np.float32))
    assert run_cli(tmp_path / "m.onnx", "--data", tmp_path / "b.npz", "-o", tmp_path / "a.onnx").returncode == 0
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    proc = run_cli(tmp_path / "m.onnx", "--data", images, "--mean", "0.5", "--std", "0.25", "-o", tmp_path / "b.onnx",
                   "--log", tmp_path / "log.json")
    assert proc.returncode == 0, proc.stderr
    assert "6 images" in json.loads((tmp_path / "log.json").read_text())["data"]


def test_readme_quick_start_command_runs(tmp_path):
    """The README's first command (after install) on a copy of the sample folder."""
    work = tmp_path / "sample_models"
    shutil.copytree(SAMPLES, work)
    proc = run_cli(work / "fitnet1.onnx")
    assert proc.returncode == 0, proc.stderr
    assert (work / "fitnet1.lsuv.onnx").is_file()
