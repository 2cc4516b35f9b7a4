"""A model written with onnxscript (another producer: opset 18, reduction axes as an input,
LayerNormalization, Gemm with transB, a Constant node) converts, passes the gate and is written
with only its weights changed, unit variance by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
from onnxscript import FLOAT, script
from onnxscript import opset18 as op

from conftest import run_cli
from onnx_helpers import check_written_model

WEIGHTS = {"w1": (8, 3, 3, 3), "b1": (8,), "scale": (8,), "shift": (8,), "w2": (6, 8), "b2": (6,), "w3": (6, 4)}


def onnxscript_model() -> onnx.ModelProto:
    @script()
    def net(x: FLOAT["N", 3, 16, 16], w1: FLOAT[8, 3, 3, 3], b1: FLOAT[8], scale: FLOAT[8], shift: FLOAT[8],  # noqa: F821 - "N": onnxscript's symbolic dim, not a name
            w2: FLOAT[6, 8], b2: FLOAT[6], w3: FLOAT[6, 4]) -> FLOAT["N", 4]:  # noqa: F821 - onnxscript's symbolic dimension, not a Python name
        h = op.Relu(op.Conv(x, w1, b1, pads=[1, 1, 1, 1], strides=[2, 2]))
        pooled = op.ReduceMean(h, op.Constant(value_ints=[2, 3]), keepdims=0)
        normed = op.LayerNormalization(pooled, scale, shift, axis=-1)
        return op.MatMul(op.Tanh(op.Gemm(normed, w2, b2, transB=1)), w3)

    model = net.to_model_proto()
    rng = np.random.default_rng(0)
    kept = [i for i in model.graph.input if i.name not in WEIGHTS]  # weights as initializers, as a real file holds them
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                                   for n, s in WEIGHTS.items())
    onnx.checker.check_model(model)
    return model


def test_onnxscript_model(tmp_path):
    src, out, log = tmp_path / "net.onnx", tmp_path / "out.onnx", tmp_path / "log.json"
    onnx.save(onnxscript_model(), src)
    batch = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", batch)
    proc = run_cli(src, "--data", tmp_path / "x.npy", "-o", out, "--log", log)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(log.read_text())["layers"]) == 3
    assert len(check_written_model(src, out, batch)) == 3  # Conv, Gemm, MatMul: unit variance by onnxruntime
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    source = {t.name: numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
    for name in ("scale", "shift"):  # LayerNormalization's parameters are not layers: byte-identical
        assert written[name].tobytes() == source[name].tobytes()
