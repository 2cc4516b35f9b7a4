"""A node onnx2torch converts but whose conversion fails when it runs (a reflect Pad over every
axis, as in silero VAD's STFT) or disagrees with onnxruntime (Resize nearest with the asymmetric
transform and ceil rounding, as TensorFlow exports write it) runs in onnxruntime inside the torch
graph, like a node onnx2torch refuses; the fidelity gate judges the whole graph again. A target
layer never moves, and a model that draws random numbers is still refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper

from conftest import run_cli
from onnx_helpers import check_written_model, nearest_ceil_model, reflect_pad_model


def _run(tmp_path, model: onnx.ModelProto, batch: np.ndarray):
    src, data, out, log = (tmp_path / n for n in ("m.onnx", "x.npy", "out.onnx", "log.json"))
    onnx.save(model, src)
    np.save(data, batch)
    proc = run_cli(src, "--data", data, "-o", out, "--log", log)
    return src, out, log, proc


def test_node_failing_when_run_runs_in_onnxruntime(tmp_path):
    batch = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    src, out, log, proc = _run(tmp_path, reflect_pad_model(), batch)
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(log.read_text())["notes"]
    moved = [n for n in notes if n.startswith("onnxruntime runs 1 node(s) inside the torch graph (Pad 'stft_pad')")]
    assert moved and "its torch conversion fails when it runs (RuntimeError" in moved[0]
    assert any(n.startswith("fidelity gate passed") for n in notes)
    variances = check_written_model(src, out, batch)  # only weights changed; unit variance by onnxruntime
    assert set(variances) == {"stft_conv", "encoder"}


def test_node_disagreeing_when_run_runs_in_onnxruntime(tmp_path):
    batch = np.random.default_rng(2).standard_normal((16, 2, 10, 10)).astype(np.float32)
    src, out, log, proc = _run(tmp_path, nearest_ceil_model(), batch)
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(log.read_text())["notes"]
    assert any(n.startswith("onnxruntime runs 1 node(s) inside the torch graph (Resize 'upsample')")
               and "disagrees with onnxruntime when it runs" in n for n in notes)
    assert set(check_written_model(src, out, batch)) == {"conv1", "conv2"}


def test_random_node_is_still_refused(tmp_path):
    """Moving nodes to onnxruntime can't make a model that draws random numbers a function."""
    model = nearest_ceil_model()
    model.graph.node[-1].output[0] = "c2"
    model.graph.node.extend([
        helper.make_node("RandomNormalLike", ["c2"], ["noise"], name="noise", seed=1.0),
        helper.make_node("Add", ["c2", "noise"], ["y"], name="noisy"),
    ])
    batch = np.random.default_rng(3).standard_normal((16, 2, 10, 10)).astype(np.float32)
    src, out, log, proc = _run(tmp_path, model, batch)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lsuv-convert: error:") and "draws random numbers" in lines[0]
    assert not out.exists()
