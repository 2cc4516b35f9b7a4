"""The ONNX run does each costly thing once (issue 18): shape inference and module construction
without the weights, the fidelity gate on a sample of a free batch dimension, the written file
proven instead of re-run where it can be, and a writer that streams the weights into the file.
Each shortcut is checked against the long way round."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from conftest import invoke
from lsuv_convert.errors import ConversionError
from lsuv_convert.formats import get_format
from lsuv_convert.formats.onnx import files, lean_conversion, runtime
from onnx_helpers import chained_weights, check_written_model, export_module

ONNX = get_format("onnx")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lean")
    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.5, 2.0)
    export_module(net, x, folder / "free.onnx", "ts13", input_names=["x"], dynamic_axes={"x": {0: "n"}})
    export_module(net, x, folder / "fixed.onnx", "ts13", input_names=["x"])
    np.save(folder / "batch.npy", x.numpy())
    return folder, x


def test_shape_inference_without_weights_gives_onnxs_value_info(exported):
    folder, _ = exported
    model = onnx.load(str(folder / "free.onnx"))
    expected = onnx.shape_inference.infer_shapes(model)
    lean = onnx.ModelProto()
    lean.CopyFrom(model)
    assert lean_conversion.infer_shapes_in_place(lean) is lean
    by_name = {v.name: v for v in expected.graph.value_info}
    assert len(lean.graph.value_info) == len(by_name) > 0
    assert all(by_name[v.name] == v for v in lean.graph.value_info)
    assert list(lean.graph.initializer) == list(model.graph.initializer)  # the weights are untouched


def test_scoped_switches_restore_what_they_replace():
    import torch.nn.init as init

    from lsuv_convert.formats.onnx import converters  # noqa: F401 - onnx2torch imported as the plug-in does
    import onnx2torch.converter

    before = (init.kaiming_uniform_, init.uniform_, onnx2torch.converter.safe_shape_inference)
    with pytest.raises(RuntimeError):
        with lean_conversion.modules_without_random_init(), lean_conversion.onnx2torch_infers_without_weights():
            weight = torch.full((4, 4), 7.0)
            assert init.kaiming_uniform_(weight) is weight and bool((weight == 7.0).all())
            raise RuntimeError("inside")
    assert (init.kaiming_uniform_, init.uniform_, onnx2torch.converter.safe_shape_inference) == before
    assert float(init.uniform_(torch.zeros(100)).abs().sum()) > 0  # random again


def _gate_note(graph) -> str:
    return next(n for n in graph.notes if n.startswith("fidelity gate passed"))


def test_gate_judges_a_sample_of_a_free_batch_dimension(exported):
    folder, x = exported
    graph = ONNX.prepare(ONNX.load(folder / "free.onnx"), [x])
    assert [tuple(t.shape) for t in graph.state.batch] == [(2, 3, 8, 8)]
    assert "the first 2 of the batch's 16 samples" in _gate_note(graph)


def test_gate_judges_the_whole_batch_when_the_file_fixes_it(exported):
    folder, x = exported
    graph = ONNX.prepare(ONNX.load(folder / "fixed.onnx"), [x])
    assert [tuple(t.shape) for t in graph.state.batch] == [(16, 3, 8, 8)]
    assert "onnxruntime on the batch," in _gate_note(graph)


def _baked_batch_model() -> onnx.ModelProto:
    """Declares a free batch dimension but reshapes to a batch of 8 written in the file (exports
    traced at one batch size do this): only the whole batch runs."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="fc"),
    ]
    inits = [numpy_helper.from_array(np.array([8, 12], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((12, 5)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "baked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_gate_falls_back_to_the_whole_batch_when_the_sample_cannot_run(tmp_path):
    path = tmp_path / "baked.onnx"
    onnx.save(_baked_batch_model(), str(path))
    x = torch.randn(8, 3, 4)
    graph = ONNX.prepare(ONNX.load(path), [x])
    assert [tuple(t.shape) for t in graph.state.batch] == [(8, 3, 4)]
    assert "onnxruntime on the batch," in _gate_note(graph)
    np.save(tmp_path / "x.npy", x.numpy())
    done = invoke(path, "--data", tmp_path / "x.npy", "-o", tmp_path / "out.onnx")
    assert done.returncode == 0, done.stderr
    y = runtime.run(onnx.load(str(tmp_path / "out.onnx")), [x.numpy()], ["y"])["y"]
    assert abs(float(y.var()) - 1.0) < 0.02  # measured by onnxruntime on the written file


def _count_runs(monkeypatch) -> list:
    calls = []
    real = runtime.run

    def counted(model, inputs, tensors):
        calls.append(len(inputs[0]))
        return real(model, inputs, tensors)

    monkeypatch.setattr(runtime, "run", counted)
    return calls


def test_written_file_is_proven_without_running_onnxruntime_again(exported, tmp_path, monkeypatch):
    folder, x = exported
    calls = _count_runs(monkeypatch)
    log = tmp_path / "log.json"
    done = invoke(folder / "free.onnx", "--data", folder / "batch.npy", "-o", tmp_path / "out.onnx", "--log", log)
    assert done.returncode == 0, done.stderr
    assert calls == [2]  # the gate, on its sample; nothing after LSUV
    notes = json.loads(log.read_text())["notes"]
    assert any(n.startswith("written file checked without running it") for n in notes), notes
    variances = check_written_model(folder / "free.onnx", tmp_path / "out.onnx", x.numpy())  # onnxruntime, whole batch
    assert len(variances) == 3


def test_a_lossy_cast_chain_is_checked_by_onnxruntime(tmp_path, monkeypatch):
    """float16 storage behind a Cast: the file can't hold exactly what torch measured, so the
    written model runs in onnxruntime once more (on the gate's inputs)."""
    path = tmp_path / "chains.onnx"
    onnx.save(chained_weights(), str(path))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    calls = _count_runs(monkeypatch)
    log = tmp_path / "log.json"
    done = invoke(path, "--data", tmp_path / "x.npy", "-o", tmp_path / "out.onnx", "--log", log)
    assert done.returncode == 0, done.stderr
    assert len(calls) == 2
    note = next(n for n in json.loads(log.read_text())["notes"] if n.startswith("written file checked"))
    assert "by onnxruntime" in note and "conv_cast.weight" in note


def test_a_non_finite_written_weight_is_refused_and_nothing_written(exported, tmp_path):
    folder, x = exported
    graph = ONNX.prepare(ONNX.load(folder / "free.onnx"), [x])
    layer = graph.module.get_submodule(graph.targets[-1].module_path)
    with torch.no_grad():
        layer.weight.view(-1)[3] = float("inf")
    with pytest.raises(ConversionError, match="not finite"):
        ONNX.save(graph, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("external", [False, True])
def test_streamed_writer_writes_what_protobuf_would(tmp_path, external):
    rng = np.random.default_rng(1)
    model = chained_weights()
    model.doc_string = "kept"
    model.graph.initializer[0].doc_string = "weight doc"
    new = files.NewTensor("w0", rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "weight doc")
    extra = files.NewTensor("extra.f16", rng.standard_normal((2, 3)).astype(np.float16))
    tensors = [new] + list(model.graph.initializer)[1:] + [extra]
    out = tmp_path / "out.onnx"
    names = {"w0", "w1_half", "extra.f16"} if external else set()
    files.write_model(model, out, names, initializers=tensors)
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    del expected.graph.initializer[:]
    expected.graph.initializer.extend(t.proto() if isinstance(t, files.NewTensor) else t for t in tensors)
    written = onnx.load(str(out))  # external data read back by onnx itself
    for tensor in written.graph.initializer:
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in written.graph.initializer} == \
        {t.name: numpy_helper.to_array(t).tobytes() for t in expected.graph.initializer}
    del written.graph.initializer[:], expected.graph.initializer[:]
    assert written == expected
    assert (tmp_path / "out.onnx.data").is_file() == external
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
