"""What gets written where: exporter de-duplication untied, shared weights kept shared, Gemm /
MatMul layouts written back exactly, float16 kept float16. All through the real CLI.

Decision tested here (the node list stays the same): a target layer that reads a tensor other
nodes also read (a zero bias the TorchScript exporter de-duplicated behind Identity nodes, shared
with a BatchNorm, say) gets its own new initializer and only that target's weight/bias input is
repointed to it; the Identity node stays. A weight several layers read *directly* (a module used
twice) stays one tensor, scaled once at its first use, and the log says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import run_cli
from lsuv_convert.formats import get_format
from onnx_helpers import SPECS, batch_for, check_written_model, eligible_layers, export_module, feeds, ort_values, tensor_bytes


class Tied(torch.nn.Module):
    """A conv used twice, two convs with equal weights, zero biases equal to a BatchNorm's bias."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.c = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.c.weight.copy_(self.b.weight)
            for m in (self.a, self.b, self.c, self.fc, self.fc2):
                m.bias.zero_()

    def forward(self, x):
        x = self.a(x)
        x = self.a(torch.relu(x))
        x = self.bn(torch.relu(x))
        x = self.c(self.b(x))
        return self.fc2(torch.relu(self.fc(x.mean((2, 3)))))


class Decoder(torch.nn.Module):
    """Strided conv, grouped ConvTranspose with output_padding, Conv1d."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.line = torch.nn.Conv1d(6, 4, 3, padding=1)

    def forward(self, x):
        y = self.up(torch.relu(self.down(x)))
        return self.line(torch.relu(y.flatten(2)))


def same_upper_model() -> onnx.ModelProto:
    """A conv with auto_pad=SAME_UPPER and stride 2 on an even size: asymmetric padding (onnx2torch
    turns it into a pad module followed by the conv)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="same_upper", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="pointwise"),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (4, 3, 3, 3)), ("b1", (4,)), ("w2", (5, 4, 1, 1)))]
    graph = helper.make_graph(nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def linear_model(dtype=np.float32) -> onnx.ModelProto:
    """Gemm with transB=0, alpha, beta and a (1, N) C; MatMul + Add (bias first); plain Gemm."""
    rng = np.random.default_rng(1)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)

    nodes = [
        helper.make_node("Gemm", ["x", "w1", "c1"], ["g1"], name="gemm_t0", alpha=0.5, beta=2.0, transB=0),
        helper.make_node("Relu", ["g1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="matmul"),
        helper.make_node("Add", ["b2", "m2"], ["a2"], name="matmul_bias"),
        helper.make_node("Tanh", ["a2"], ["t2"]),
        helper.make_node("Gemm", ["t2", "w3", "c3"], ["y"], name="gemm_t1", transB=1),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", elem, [32, 8])], [helper.make_tensor_value_info("y", elem, [32, 3])],
        [init("w1", (8, 5)), init("c1", (1, 5)), init("w2", (5, 7)), init("b2", (7,)), init("w3", (3, 7)), init("c3", (3,))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _cli_batch(folder: Path, models: list[Path], *options) -> dict[str, dict]:
    proc = run_cli(*models, "--output-dir", folder / "out", "--log", folder / "logs", "--json", "-q", *options)
    lines = {Path(d["model"]).name: d for d in map(json.loads, filter(None, proc.stdout.splitlines()))}
    assert proc.returncode == 0, proc.stderr
    assert all(d["status"] == "ok" for d in lines.values()), lines
    return {name: dict(d, log=json.loads((folder / "logs" / (Path(d["output"]).name + ".json")).read_text()))
            for name, d in lines.items()}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """Tied and Decoder exported by both exporters, an auto_pad conv, squeezenet exported in
    float16: one CLI run."""
    folder = tmp_path_factory.mktemp("sharing")
    torch.manual_seed(0)
    x = torch.randn(4, 4, 8, 8)
    models = []
    for exporter in ("ts13", "dy18"):
        path = export_module(Tied(), x, folder / f"tied_{exporter}.onnx", exporter)
        np.save(path.with_suffix(".npy"), x.numpy())
        models.append(path)
    torch.manual_seed(0)
    decoder, y = Decoder(), torch.randn(4, 3, 12, 12)
    path = export_module(decoder, y, folder / "decoder_ts17.onnx", "ts17", input_names=["x"], dynamic_axes={"x": {0: "N"}})
    np.save(path.with_suffix(".npy"), torch.randn(6, 3, 12, 12).numpy())  # another batch size than exported
    models.append(path)
    path = export_module(decoder, y, folder / "decoder_dy18.onnx", "dy18")
    np.save(path.with_suffix(".npy"), y.numpy())
    models.append(path)
    onnx.save(same_upper_model(), str(folder / "same_upper.onnx"))
    np.save(folder / "same_upper.npy", torch.randn(4, 3, 10, 10).numpy())
    models.append(folder / "same_upper.onnx")
    torch.manual_seed(0)
    spec = SPECS["squeezenet1_1"]
    batch = batch_for(spec)
    half = export_module(spec.factory().half(), torch.from_numpy(batch).half(), folder / "squeezenet_fp16.onnx", "ts17")
    np.save(half.with_suffix(".npy"), batch)
    models.append(half)
    return folder, _cli_batch(folder, models)


def _inputs_of(model: onnx.ModelProto, node_name: str) -> list[str]:
    return list(next(n for n in model.graph.node if n.name == node_name).input)


def _resolved(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    identity = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    while name in identity:
        name = identity[name]
    return {t.name: t for t in model.graph.initializer}[name]


def test_torchscript_export_deduplication_untied(default_run):
    folder, runs = default_run
    run = runs["tied_ts13.onnx"]
    src_path, out_path = folder / "tied_ts13.onnx", Path(run["output"])
    check_written_model(src_path, out_path, np.load(folder / "tied_ts13.npy"))
    src, out = onnx.load(str(src_path)), onnx.load(str(out_path))
    # the exporter found b and c equal and made c's weight an Identity of b's: c got its own again
    assert _inputs_of(src, "/c/Conv")[1] != "b.weight" and _resolved(src, _inputs_of(src, "/c/Conv")[1]).name == "b.weight"
    c_weight = _inputs_of(out, "/c/Conv")[1]
    assert c_weight not in {t.name for t in src.graph.initializer}
    assert tensor_bytes(_resolved(out, c_weight)) != tensor_bytes(_resolved(out, "b.weight"))
    # the BatchNorm reads exactly what it read before, whatever it shared with conv biases
    for name in _inputs_of(src, "/bn/BatchNormalization")[1:]:
        assert tensor_bytes(_resolved(out, name)) == tensor_bytes(_resolved(src, name))
    # the conv used twice keeps one weight, scaled once; the log says so
    assert _inputs_of(out, "/a/Conv")[1] == _inputs_of(out, "/a_1/Conv")[1] == "a.weight"
    assert tensor_bytes(_resolved(out, "a.weight")) != tensor_bytes(_resolved(src, "a.weight"))
    log = run["log"]
    assert [e["name"] for e in log["layers"]] == ["/a/Conv", "/b/Conv", "/c/Conv", "/fc/Gemm", "/fc2/Gemm"]
    assert any("/a/Conv, /a_1/Conv: kept shared" in note for note in log["notes"])
    assert any(note.startswith("untied") and "/c/Conv.weight" in note for note in log["notes"])


def test_dynamo_export_shared_weights_stay_shared(default_run):
    """The dynamo exporter makes equal weights one initializer read directly: kept as one."""
    folder, runs = default_run
    run = runs["tied_dy18.onnx"]
    src_path, out_path = folder / "tied_dy18.onnx", Path(run["output"])
    check_written_model(src_path, out_path, np.load(folder / "tied_dy18.npy"))
    out = onnx.load(str(out_path))
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert [n.input[1] for n in convs] == ["a.weight", "a.weight", "b.weight", "b.weight"]
    assert len(run["log"]["layers"]) == 4
    assert sum("kept shared" in note for note in run["log"]["notes"]) == 2
    assert any("external data" in note for note in run["log"]["notes"])


def test_float16_model_stays_float16(default_run):
    folder, runs = default_run
    run = runs["squeezenet_fp16.onnx"]
    src_path, out_path = folder / "squeezenet_fp16.onnx", Path(run["output"])
    variances = check_written_model(src_path, out_path, np.load(folder / "squeezenet_fp16.npy"))
    out = onnx.load(str(out_path))
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert {t.data_type for t in out.graph.initializer} == {TensorProto.FLOAT16}
    assert len(variances) == len(run["log"]["layers"]) == 26


@pytest.mark.parametrize("name", ["decoder_ts17", "decoder_dy18", "same_upper"])
def test_convtranspose_conv1d_and_asymmetric_padding(default_run, name):
    folder, runs = default_run
    run = runs[f"{name}.onnx"]
    variances = check_written_model(folder / f"{name}.onnx", Path(run["output"]), np.load(folder / f"{name}.npy"))
    ops = {e["op"] for e in run["log"]["layers"]}
    assert len(variances) == len(run["log"]["layers"]) == (2 if name == "same_upper" else 3)
    assert ops == ({"Conv"} if name == "same_upper" else {"Conv", "ConvTranspose"})


def test_dynamic_batch_dimension(default_run):
    folder, runs = default_run
    graph = get_format("onnx").load(folder / "decoder_ts17.onnx")
    assert graph.inputs[0].shape == (None, 3, 12, 12)
    assert runs["decoder_ts17.onnx"]["log"]["data"].endswith("(6, 3, 12, 12)")


@pytest.fixture(scope="module")
def keep_center_run(tmp_path_factory):
    """The linear model in float32 and float16, rescaled (--pre-init keep) and centred."""
    folder = tmp_path_factory.mktemp("linear")
    x = np.random.default_rng(2).standard_normal((32, 8)).astype(np.float32)
    models = []
    for tag, dtype in (("f32", np.float32), ("f16", np.float16)):
        path = folder / f"linear_{tag}.onnx"
        onnx.save(linear_model(dtype), str(path))
        np.save(path.with_suffix(".npy"), x)
        models.append(path)
    return folder, _cli_batch(folder, models, "--pre-init", "keep", "--center")


@pytest.mark.parametrize("tag", ["f32", "f16"])
def test_gemm_and_matmul_written_back_in_their_own_layout(keep_center_run, tag):
    folder, runs = keep_center_run
    src_path, out_path = folder / f"linear_{tag}.onnx", Path(runs[f"linear_{tag}.onnx"]["output"])
    batch = np.load(folder / f"linear_{tag}.npy")
    tol = 0.02
    variances = check_written_model(src_path, out_path, batch, tol=tol)
    assert sorted(variances) == ["gemm_t0", "gemm_t1", "matmul"]
    src, out = onnx.load(str(src_path)), onnx.load(str(out_path))
    src_w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in src.graph.initializer}
    out_w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in out.graph.initializer}
    # --pre-init keep: each weight is the original times one factor, in the same (K, N) / (N, K) layout
    rel = 1e-6 if tag == "f32" else 2e-3
    for name in ("w1", "w2", "w3"):
        scale = (out_w[name] * src_w[name]).sum() / (src_w[name] ** 2).sum()
        assert scale > 0 and np.abs(out_w[name] - scale * src_w[name]).max() <= rel * np.abs(out_w[name]).max()
    assert list(out.graph.initializer[1].dims) == [1, 5]  # c1 keeps its (1, N) shape
    # --center: every layer output has zero mean per output feature (onnxruntime's numbers)
    layers = eligible_layers(src)
    values = ort_values(out, feeds(out, batch), list(layers.values()))
    for name, tensor in layers.items():
        means = values[tensor].astype(np.float64).mean(axis=0)
        assert np.abs(means).max() < (1e-4 if tag == "f32" else 2e-2), (name, means)
    # the plug-in's own measure() (lsuv-convert verify) agrees with the independent measurement
    measured = get_format("onnx").measure(out_path, None, [torch.from_numpy(batch)], None)
    for name, var in variances.items():
        assert abs(measured[name][0] - var) < 1e-6 * max(1.0, var)


def test_in_place_keeps_the_data_file_the_old_model_reads(default_run, tmp_path):
    """Writing over the input must not change the weights under the model being replaced: the
    new weights go to a new data file, and the output is complete on its own."""
    from lsuv_convert import lsuv_init

    folder, _ = default_run
    for p in folder.iterdir():
        if p.name.startswith("tied_dy18."):
            (tmp_path / p.name).write_bytes(p.read_bytes())
    model = tmp_path / "tied_dy18.onnx"
    old_data = (tmp_path / "tied_dy18.onnx.data").read_bytes()
    batch = np.load(folder / "tied_dy18.npy")
    fmt = get_format("onnx")
    graph = fmt.load(model)
    graph = fmt.prepare(graph, [torch.from_numpy(batch)])
    lsuv_init(graph.module, (torch.from_numpy(batch),), targets=[t.module_path for t in graph.targets], seed=0)
    fmt.save(graph, model)
    assert (tmp_path / "tied_dy18.onnx.data").read_bytes() == old_data
    assert (tmp_path / "tied_dy18.onnx.2.data").is_file()
    written = onnx.load(str(model), load_external_data=False)
    locations = {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"tied_dy18.onnx.2.data"}
    check_written_model(folder / "tied_dy18.onnx", model, batch)


def test_gemm_c_that_is_not_a_bias_is_kept(tmp_path):
    """A scalar C initializer and a computed C are added as the model says and never written."""
    from lsuv_convert import lsuv_init

    rng = np.random.default_rng(4)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Gemm", ["x", "w1", "c1"], ["g1"], name="scalar_c", transB=1),
        helper.make_node("Gemm", ["x", "w2", "g1"], ["g2"], name="computed_c", beta=0.1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 6])],
                              [helper.make_tensor_value_info("g2", TensorProto.FLOAT, [16, 5])],
                              [init("w1", (5, 6)), init("c1", (1,)), init("w2", (6, 5))])
    path = tmp_path / "gemm_c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    batch = rng.standard_normal((16, 6)).astype(np.float32)
    fmt = get_format("onnx")
    graph = fmt.load(path)
    graph = fmt.prepare(graph, [torch.from_numpy(batch)])
    report = lsuv_init(graph.module, (torch.from_numpy(batch),), targets=[t.module_path for t in graph.targets], seed=0)
    assert not report.unconverged
    fmt.save(graph, tmp_path / "out.onnx")
    check_written_model(path, tmp_path / "out.onnx", batch)
    out = {t.name: t for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    assert tensor_bytes(out["c1"]) == tensor_bytes(onnx.load(str(path)).graph.initializer[1])
