"""Bad ONNX input: one clear error, nothing written.

Loading is checked in-process over many broken variants (cheap); the real console script is run
for the fidelity gate (empty, random, truncated and custom-op files through the CLI are in
test_errors.py).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import invoke, run_cli
from lsuv_convert.errors import LsuvError, ModelFormatError
from lsuv_convert.formats import get_format
from onnx_helpers import export_module, ort_values

ONNX = get_format("onnx")
RNG = np.random.default_rng(0)


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )


@pytest.fixture(scope="module")
def small_ts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small_ts")
    return export_module(_small_net(), torch.randn(2, 3, 16, 16), folder / "small.onnx", "ts13")


@pytest.fixture(scope="module")
def small_external(tmp_path_factory) -> Path:
    """The same net saved with every initializer in a side file."""
    folder = tmp_path_factory.mktemp("small_ext")
    model = onnx.load(str(export_module(_small_net(), torch.randn(2, 3, 16, 16), folder / "tmp.onnx", "ts13")))
    (folder / "tmp.onnx").unlink()
    onnx.save_model(model, str(folder / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    return folder / "ext.onnx"


def _copy(path: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in path.parent.iterdir():
        if p.name.startswith(path.name):
            shutil.copy(p, dest / p.name)
    return dest / path.name


def _load_error(path: Path) -> str:
    with pytest.raises(ModelFormatError) as info:
        ONNX.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_empty_and_random_files(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "empty" in _load_error(tmp_path / "empty.onnx")
    (tmp_path / "random.onnx").write_bytes(RNG.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _load_error(tmp_path / "random.onnx")
    (tmp_path / "text.onnx").write_text("ir_version: 8\ngraph { }\n")
    _load_error(tmp_path / "text.onnx")
    assert "not found" in _load_error(tmp_path / "missing.onnx")


def test_truncated_anywhere(small_ts, tmp_path):
    """Cut the file at many places: always one ModelFormatError, never a raw exception."""
    data = small_ts.read_bytes()
    cuts = sorted(set(np.linspace(1, len(data) - 1, 60).astype(int).tolist() + [1, 2, 10, len(data) - 1]))
    for cut in cuts:
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        _load_error(path)


def test_corrupt_bytes(small_ts, tmp_path):
    """Overwrite runs of bytes: either a clear ModelFormatError or (rarely) a model that still
    parses and is then checked like any other; never a raw exception."""
    data = bytearray(small_ts.read_bytes())
    for k, start in enumerate(np.linspace(0, len(data) - 64, 25).astype(int)):
        bad = bytearray(data)
        bad[start:start + 48] = RNG.integers(0, 256, 48, dtype=np.uint8).tobytes()
        path = tmp_path / f"bad{k}.onnx"
        path.write_bytes(bytes(bad))
        try:
            ONNX.load(path)
        except LsuvError as exc:
            assert "\n" not in str(exc)


def _one_conv_and(node, opsets, extra_inits=()):
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([conv, node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [onnx.ValueInfoProto(name=node.output[0])], [w, *extra_inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def test_custom_domain_op_onnxruntime_cannot_run_is_named(tmp_path):
    """A node torch can't convert runs in onnxruntime; one before a layer that onnxruntime doesn't
    know either is refused by name (at the fidelity gate, before anything is written). After the
    last layer it would not matter: nothing there is run."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    frob = helper.make_node("Frobnicate", ["x"], ["f"], name="frob", domain="com.example")
    conv = helper.make_node("Conv", ["f", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([frob, conv], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [onnx.ValueInfoProto(name="y")], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "custom.onnx"))
    proc = invoke(tmp_path / "custom.onnx")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "Frobnicate" in proc.stderr and "com.example" in proc.stderr and "frob" in proc.stderr
    assert not (tmp_path / "custom.lsuv.onnx").exists()


def test_standard_op_without_converter_after_the_last_layer_is_not_converted(tmp_path):
    node = helper.make_node("Hardmax", ["c"], ["y"], name="hm")
    onnx.save(_one_conv_and(node, [("", 17)]), str(tmp_path / "hardmax.onnx"))
    loaded = ONNX.load(tmp_path / "hardmax.onnx")
    assert [t.name for t in loaded.targets] == ["conv"]
    assert any("feed no target layer" in note and "Hardmax" in note for note in loaded.notes)


def test_nothing_to_initialize(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    assert "nothing to initialize" in _load_error(tmp_path / "relu.onnx")


def test_undefined_input_and_unsorted_graph(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    relu = helper.make_node("Relu", ["c"], ["y"])
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    onnx.save(helper.make_model(helper.make_graph([relu, conv], "g", [x], [y], [w])), str(tmp_path / "unsorted.onnx"))
    assert "topologically" in _load_error(tmp_path / "unsorted.onnx")
    conv_missing = helper.make_node("Conv", ["x", "nowhere"], ["y"])
    onnx.save(helper.make_model(helper.make_graph([conv_missing], "g", [x], [y])), str(tmp_path / "dangling.onnx"))
    assert "nowhere" in _load_error(tmp_path / "dangling.onnx")


def test_external_data_missing_short_or_outside(small_external, tmp_path):
    missing = _copy(small_external, tmp_path / "missing")
    (missing.parent / "ext.onnx.data").unlink()
    assert "not found" in _load_error(missing)

    short = _copy(small_external, tmp_path / "short")
    data = (short.parent / "ext.onnx.data").read_bytes()
    (short.parent / "ext.onnx.data").write_bytes(data[: len(data) // 2])
    _load_error(short)

    outside = _copy(small_external, tmp_path / "outside")
    model = onnx.load(str(outside), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(model, str(outside))
    assert "beside the model" in _load_error(outside)


# ---------------------------------------------------------------- through the console script


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_clean_failure(proc, folder: Path, before: dict, *needles: str):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lsuv-convert: error")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert _snapshot(folder) == before, "files were written or inputs changed"


def resize_model(constant_output: bool = False) -> onnx.ModelProto:
    """Conv -> Resize (nearest, ONNX's default half_pixel / round_prefer_floor) -> Conv.

    onnx2torch's Resize-13 always resizes like torch's 'nearest' (asymmetric, floor), so at a
    scale of 0.6 its torch graph computes something else than the model: the gate must see it.
    With ``constant_output`` the model output is multiplied by zero, so only the comparison of
    the target layers' outputs can see the difference."""
    w1 = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(RNG.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2")
    scales = numpy_helper.from_array(np.array([1, 1, 0.6, 0.6], np.float32), "scales")
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c1", "", "scales"], ["r"], name="upsample", mode="nearest"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    out = "c2"
    if constant_output:
        nodes.append(helper.make_node("Mul", ["c2", "zero"], ["y"], name="mute"))
        out = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 10, 10])],
                              [onnx.ValueInfoProto(name=out)], [w1, w2, scales, zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("constant_output", [False, True])
def test_fidelity_gate_catches_a_wrong_conversion(tmp_path, constant_output):
    """The gate sees the wrong Resize (also behind a constant model output); the Resize then runs
    in onnxruntime and the torch graph computes what onnxruntime computes."""
    path = tmp_path / "resize.onnx"
    model = resize_model(constant_output)
    onnx.save(model, str(path))
    x = torch.randn(2, 3, 10, 10)
    graph = ONNX.prepare(ONNX.load(path), [x])
    assert any(n.startswith("onnxruntime runs 1 node(s) inside the torch graph (Resize 'upsample')")
               and "disagrees with onnxruntime" in n for n in graph.notes)
    state = graph.state
    path_c2, _ = state.converted.tensors["c2"]
    with torch.no_grad():
        found = {}
        handle = graph.module.get_submodule(path_c2).register_forward_hook(lambda m, i, o: found.setdefault("c2", o))
        graph.module(x)
        handle.remove()
    reference = ort_values(model, {"x": x.numpy()}, ["c2"])["c2"]
    assert np.abs(found["c2"].numpy() - reference).max() <= 1e-4 * np.abs(reference).max()


def deconv_output_shape_model() -> onnx.ModelProto:
    """Conv -> ConvTranspose with an ``output_shape`` attribute, which onnx2torch ignores: the
    target layer itself is converted wrongly, so nothing can run in its place."""
    w1 = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(RNG.standard_normal((4, 2, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c1", "w2"], ["y"], name="deconv", strides=[2, 2], output_shape=[20, 20]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 10, 10])],
                              [onnx.ValueInfoProto(name="y")], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fidelity_gate_refuses_through_cli(tmp_path):
    onnx.save(deconv_output_shape_model(), str(tmp_path / "deconv.onnx"))
    np.save(tmp_path / "batch.npy", RNG.standard_normal((2, 3, 10, 10)).astype(np.float32))
    before = _snapshot(tmp_path)
    proc = run_cli(tmp_path / "deconv.onnx", "--data", tmp_path / "batch.npy", "-o", tmp_path / "out.onnx")
    _assert_clean_failure(proc, tmp_path, before, "'deconv'", "disagrees with onnxruntime")


def test_layers_only_inside_subgraphs_are_named(tmp_path):
    """silero VAD's main file holds its whole net in both branches of an If on the sample rate:
    nothing torch runs holds a layer, and the refusal says where the layers are."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    branch = [helper.make_graph([helper.make_node("Conv", ["x", "w"], [f"y_{k}"], name=f"conv_{k}")], f"branch_{k}", [],
                                [onnx.ValueInfoProto(name=f"y_{k}")]) for k in ("then", "else")]
    nodes = [helper.make_node("If", ["flag"], ["y"], name="by_rate", then_branch=branch[0], else_branch=branch[1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8]),
                                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [onnx.ValueInfoProto(name="y")], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)]), str(tmp_path / "if.onnx"))
    with pytest.raises(ModelFormatError) as info:
        ONNX.load(tmp_path / "if.onnx")
    message = str(info.value)
    assert "every Conv, ConvTranspose, Gemm or MatMul layer with a stored weight is inside a subgraph" in message
    assert "in If 'by_rate'), and subgraphs run in onnxruntime: nothing to initialize" in message
