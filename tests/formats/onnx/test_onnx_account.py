"""The ONNX log's account lists the file's stored float tensors, named as the file names them,
each once: initialized (with the layers that scaled it), unreached, or skipped with the reason,
including tensors only onnxruntime regions, LSTMs and If branches read."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import invoke
from onnx_helpers import export_module, if_lstm_contrib, paddle_style_constants


def _run(tmp_path, model: onnx.ModelProto | None, batch: np.ndarray, *extra, path=None):
    path = path or tmp_path / "m.onnx"
    if model is not None:
        onnx.save(model, str(path))
    np.save(tmp_path / "x.npy", batch)
    log = tmp_path / "log.json"
    done = invoke(path, "--data", tmp_path / "x.npy", "-o", tmp_path / "out.onnx", "--log", log, *extra)
    return done, (json.loads(log.read_text()) if log.exists() else None)


def _float_initializers(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: int(np.prod(t.dims)) for t in model.graph.initializer
            if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)}


class Shared(torch.nn.Module):
    """A conv used twice (one tensor, two layers) and a BatchNorm that can't be folded."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = self.bn(torch.relu(self.conv(x)) + x)
        return self.fc(x.mean((2, 3)))


def test_account_names_every_stored_tensor_once(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 4, 6, 6)
    net = Shared().eval()
    path = export_module(net, x, tmp_path / "shared.onnx", "ts13", do_constant_folding=False)
    done, log = _run(tmp_path, None, x.numpy(), path=path)
    assert done.returncode == 0, done.stderr
    source = onnx.load(str(path))
    names = [entry["name"] for entry in log["account"]]
    assert sorted(names) == sorted(_float_initializers(source))  # each once, as the file names it
    assert sum(entry["numel"] for entry in log["account"]) == sum(_float_initializers(source).values())
    by_name = {entry["name"]: entry for entry in log["account"]}
    conv = by_name["conv.weight"]
    assert conv["status"] == "initialized" and conv["linear"] and len(conv["layers"]) == 1  # scaled at its first use
    assert by_name["fc.weight"]["status"] == "initialized"
    bn = [e for n, e in by_name.items() if n.startswith("bn.")]
    assert bn and all(e["status"] == "skipped" and "BatchNormalization" in e["reason"] for e in bn)
    assert log["counts"] == {"initialized": 4, "unreached": 0, "skipped": len(bn)}


def test_recurrent_and_subgraph_weights_are_skipped_with_reasons(tmp_path):
    model = if_lstm_contrib()
    batch = np.random.default_rng(0).standard_normal((4, 3, 4, 4)).astype(np.float32)
    done, log = _run(tmp_path, model, batch)
    assert done.returncode == 0, done.stderr
    by_name = {entry["name"]: entry for entry in log["account"]}
    assert {n for n, e in by_name.items() if e["status"] == "initialized"} == {"cw", "cb", "fw", "fb"}
    for name in ("W", "R", "B"):
        assert by_name[name]["status"] == "skipped" and "recurrent" in by_name[name]["reason"]
    inner = by_name["inner_w"]  # the MatMul inside the If's then-branch
    assert inner["status"] == "skipped" and inner["linear"] and "subgraph of If 'if'" in inner["reason"]
    strict, _ = _run(tmp_path, None, batch, "--strict", "--force", path=tmp_path / "m.onnx")
    assert strict.returncode == 3 and "inner_w" in strict.stderr


def test_constant_node_weights_are_accounted(tmp_path):
    model = paddle_style_constants()
    spec = model.graph.input[0].type.tensor_type.shape
    shape = [d.dim_value or 4 for d in spec.dim]
    done, log = _run(tmp_path, model, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    assert done.returncode == 0, done.stderr
    constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    initialized = {e["name"] for e in log["account"] if e["status"] == "initialized"}
    assert initialized & constants, (initialized, constants)


def test_a_layer_onnxruntime_runs_is_skipped_and_strict_says_so(tmp_path):
    """auto_pad SAME on an input of unknown size: that conv runs inside onnxruntime, so its weight
    is skipped (a linear map --strict insists on); the conv after it is initialized."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="same_conv", auto_pad="SAME_UPPER", strides=[2, 2]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="plain_conv")]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((5, 4, 1, 1)).astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    batch = rng.standard_normal((4, 3, 7, 7)).astype(np.float32)
    done, log = _run(tmp_path, model, batch)
    assert done.returncode == 0, done.stderr
    by_name = {entry["name"]: entry for entry in log["account"]}
    assert by_name["w2"]["status"] == "initialized"
    assert by_name["w1"]["status"] == "skipped" and by_name["w1"]["linear"]
    assert "same_conv" in by_name["w1"]["reason"] and "onnxruntime" in by_name["w1"]["reason"]
    strict, _ = _run(tmp_path, None, batch, "--strict", "--force", path=tmp_path / "m.onnx")
    assert strict.returncode == 3 and "w1" in strict.stderr
