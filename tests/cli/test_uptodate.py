"""An output is skipped only if its record shows the same inputs (by content), settings, tool
version, and every requested log / plot of that run, unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import invoke
from safety_helpers import tiny_batch, tiny_onnx


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv("LSUV_CONVERT_STATE", str(tmp_path / "state"))
    tiny_onnx(tmp_path / "m.onnx")
    tiny_batch(tmp_path / "m.npy")
    tiny_batch(tmp_path / "other.npy", seed=9)
    assert invoke("m.onnx", cwd=tmp_path).returncode == 0
    return tmp_path


def status(work, *args) -> str:
    proc = invoke("m.onnx", "--json", *args, cwd=work)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])["status"]


def test_same_run_is_skipped_and_a_touch_changes_nothing(work):
    assert status(work) == "skipped"
    (work / "m.onnx").touch()
    assert status(work) == "skipped"


@pytest.mark.parametrize("args", [["--seed", "3"], ["--tol", "0.05"], ["--data", "other.npy"],
                                  pytest.param(["--pre-init", "gaussian"], marks=pytest.mark.slow)])
def test_other_settings_rebuild(work, args):
    assert status(work, *args) == "ok"
    assert status(work, *args) == "skipped"
    assert status(work) == "ok"  # back to the first settings: rebuilt again


def test_changed_contents_rebuild(work):
    np.save(work / "m.npy", np.load(work / "m.npy") * 3)
    assert status(work) == "ok"
    (work / "m.lsuv.onnx").write_bytes((work / "m.lsuv.onnx").read_bytes() + b"")
    assert status(work) == "skipped"
    tiny_onnx(work / "m.onnx", seed=4)  # the model itself replaced
    assert status(work) == "ok"
    out = work / "m.lsuv.onnx"
    out.write_bytes(out.read_bytes()[:-1] + b"\x00")  # someone edited the output
    assert status(work) == "ok"


@pytest.mark.slow
def test_a_newly_requested_log_or_plot_is_written(work):
    assert status(work, "--log", "m.json") == "ok"
    assert (work / "m.json").is_file()
    assert status(work, "--log", "m.json") == "skipped"
    (work / "m.json").unlink()
    assert status(work, "--log", "m.json") == "ok" and (work / "m.json").is_file()
    assert status(work, "--log", "m.json", "--plot", "m.png") == "ok" and (work / "m.png").is_file()
    assert status(work, "--log", "m.json", "--plot", "m.png") == "skipped"


def test_a_log_that_failed_after_the_model_is_retried(work, monkeypatch):
    from lsuv_convert.command import convert as pipeline
    from lsuv_convert.errors import OutputError

    def disk_full(log, path):
        raise OutputError("disk full while writing; nothing was written", path=path)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "write_log", disk_full)
        proc = invoke("m.onnx", "--force", "--log", "m.json", cwd=work)
    assert proc.returncode == 1 and "disk full" in proc.stderr
    assert (work / "m.lsuv.onnx").is_file() and not (work / "m.json").exists()  # the model was written first
    assert status(work, "--log", "m.json") == "ok"
    assert (work / "m.json").is_file()
