"""ONNX files as other producers write them, through the real CLI (one in-process run per corpus).

Each corpus is converted by ONE `lsuv-convert FOLDER --output-dir ...` run; the tests then check
every written file with independent readers: onnxruntime measures each initialized layer's output
variance on the written file, plain onnx compares the node list, node inputs and initializer
names with the source, and the log must name every layer that was not initialized and why.

Corpora: hand-built files of the Caffe2 / PyTorch 0.3 era (IR 3, opsets 6-9), paddle2onnx-style
Constant weights, weights behind Transpose / Cast / Reshape, If + LSTM + com.microsoft ops,
torch exports with detection / segmentation post-processing, transformers (BERT, GPT-2, ViT,
wav2vec2, SegFormer, Whisper encoder) exported by both of torch's exporters, and the onnx
package's own backend test models (PyTorch 0.3-era single-layer files).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import invoke
from onnx_helpers import (
    LEGACY_BUILDERS,
    check_values_only,
    export_postprocessing,
    export_transformer,
    ort_layer_variances,
    quantized_conv,
)

TOL = 0.02


def _convert_folder(folder: Path, *options) -> tuple[int, dict[str, dict], str]:
    """One CLI run over ``folder``: (exit code, {model file name: JSON line + its log}, stderr)."""
    out, logs = folder.parent / f"{folder.name}_out", folder.parent / f"{folder.name}_logs"
    proc = invoke(folder, "--output-dir", out, "--log", logs, "--json", *options)
    runs = {}
    for line in filter(None, proc.stdout.splitlines()):
        entry = json.loads(line)
        if entry["status"] == "ok":
            log = logs if logs.is_file() else logs / (Path(entry["output"]).name + ".json")  # one model: a file
            entry["log"] = json.loads(log.read_text())
        runs[Path(entry["model"]).name] = entry
    return proc.returncode, runs, proc.stderr


def _feeds(model: onnx.ModelProto, batch_path: Path) -> dict:
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if batch_path.suffix == ".npz":
        with np.load(batch_path) as data:
            return {n: data[n] for n in names}
    return {names[0]: np.load(batch_path)}


def _check_written(src_path: Path, entry: dict, feeds: dict, allow_untie: bool = False) -> dict[str, float]:
    src, out = onnx.load(str(src_path)), onnx.load(entry["output"])
    check_values_only(src, out, allow_untie=allow_untie)
    names = [layer["name"] for layer in entry["log"]["layers"]]
    assert names, entry
    variances = ort_layer_variances(out, feeds, names)
    bad = {n: v for n, v in variances.items() if not abs(v - 1.0) < TOL}
    assert not bad, bad
    return variances


# ---------------------------------------------------------------- hand-built files of other producers


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy") / "models"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, build in LEGACY_BUILDERS.items():
        model = build()
        onnx.save(model, str(folder / f"{name}.onnx"))
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        np.save(folder / f"{name}.npy", rng.standard_normal(shape).astype(np.float32))
    code, runs, stderr = _convert_folder(folder)
    return folder, code, runs, stderr


@pytest.mark.slow
def test_legacy_corpus_all_initialized(legacy):
    folder, code, runs, stderr = legacy
    assert code == 0, stderr
    assert sorted(runs) == sorted(f"{n}.onnx" for n in LEGACY_BUILDERS)
    for name in LEGACY_BUILDERS:
        entry = runs[f"{name}.onnx"]
        _check_written(folder / f"{name}.onnx", entry, _feeds(onnx.load(str(folder / f"{name}.onnx")), folder / f"{name}.npy"))


@pytest.mark.slow
def test_legacy_layers_and_notes(legacy):
    folder, _, runs, _ = legacy
    layers = {name: [layer["name"] for layer in runs[f"{name}.onnx"]["log"]["layers"]] for name in LEGACY_BUILDERS}
    assert layers["caffe2_opset7"] == ["conv1", "conv2", "fc"]
    assert layers["pytorch03_opset6"] == ["conv1", "conv2", "fc"]
    assert layers["paddle_constants"] == ["conv2d_0", "conv2d_1", "linear_0.matmul"]
    assert layers["chained_weights"] == ["conv_identity", "conv_cast", "matmul_transposed", "gemm_reshaped"]
    assert layers["if_lstm_contrib"] == ["conv", "fc"]
    notes = runs["if_lstm_contrib.onnx"]["log"]["notes"]
    assert any("'lstm'" in n and "not initialized" in n for n in notes), notes
    assert any("'inner_matmul'" in n and "not initialized" in n for n in notes), notes
    assert any("onnxruntime runs" in n and "LSTM" in n for n in notes), notes
    assert any("Softmax" in n and "feed no target" in n for n in runs["caffe2_opset7.onnx"]["log"]["notes"])
    assert any("lifted to opset 7" in n for n in runs["pytorch03_opset6.onnx"]["log"]["notes"])


@pytest.mark.slow
def test_weights_written_where_the_producer_keeps_them(legacy):
    """Constant values, float16 behind a Cast, a transposed and a reshaped weight: each stored
    tensor holds the new values in its own layout and type; folded-BN zero biases stay ONE tensor."""
    folder, _, runs, _ = legacy
    src = onnx.load(str(folder / "chained_weights.onnx"))
    out = onnx.load(runs["chained_weights.onnx"]["output"])
    before = {t.name: onnx.numpy_helper.to_array(t) for t in src.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    for name in ("w0", "w1_half", "w2_t", "w3_flat"):
        assert after[name].dtype == before[name].dtype and after[name].shape == before[name].shape
        assert not np.array_equal(after[name], before[name]), name
    paddle_src = onnx.load(str(folder / "paddle_constants.onnx"))
    paddle_out = onnx.load(runs["paddle_constants.onnx"]["output"])
    assert not paddle_out.graph.initializer
    changed = [a.output[0] for a, b in zip(paddle_src.graph.node, paddle_out.graph.node)
               if a.op_type == "Constant" and a.SerializeToString() != b.SerializeToString()]
    assert set(changed) == {"conv_w", "conv_b", "conv1_w", "fc_w", "fc_b"}  # the pre-init zeroes biases
    for node in paddle_out.graph.node:
        if node.output[0] in ("conv_b", "fc_b"):
            assert not onnx.numpy_helper.to_array(node.attribute[0].t).any()
    folded = onnx.load(runs["legacy_opset9_folded_bn.onnx"]["output"])
    assert [list(n.input) for n in folded.graph.node] == [list(n.input) for n in onnx.load(str(folder / "legacy_opset9_folded_bn.onnx")).graph.node]
    zero = next(t for t in folded.graph.initializer if t.name == "zero")
    assert not onnx.numpy_helper.to_array(zero).any()


@pytest.mark.slow
def test_center_unties_only_what_differs(tmp_path):
    """With --center the folded-BN convs' biases get different values: each conv gets its own
    initializer, the shared one is left as it was; the README says --center can untie."""
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(LEGACY_BUILDERS["legacy_opset9_folded_bn"](), str(folder / "folded.onnx"))
    np.save(folder / "folded.npy", np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
    code, runs, stderr = _convert_folder(folder, "--center")
    assert code == 0, stderr
    src, out = onnx.load(str(folder / "folded.onnx")), onnx.load(runs["folded.onnx"]["output"])
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in src.graph.node]
    biases = [n.input[2] for n in out.graph.node if n.op_type == "Conv"]
    assert len(set(biases)) == 3 and "zero" in {t.name for t in out.graph.initializer}
    assert any(note.startswith("untied") for note in runs["folded.onnx"]["log"]["notes"])
    variances = ort_layer_variances(out, {"x": np.load(folder / "folded.npy")}, ["conv1", "conv2", "conv3"])
    assert all(abs(v - 1) < TOL for v in variances.values()), variances


def _token_model() -> onnx.ModelProto:
    """int64 token ids into an embedding table, a bool mask, a linear layer: a transformer's front."""
    h, rng = onnx.helper, np.random.default_rng(5)
    nodes = [
        h.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
        h.make_node("Cast", ["mask"], ["maskf"], to=onnx.TensorProto.FLOAT),
        h.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        h.make_node("Mul", ["emb", "mask3"], ["masked"]),
        h.make_node("MatMul", ["masked", "w"], ["m"], name="proj"),
        h.make_node("Add", ["m", "b"], ["y"], name="proj_bias"),
    ]
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "last"),
             onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    graph = h.make_graph(nodes, "tokens", [h.make_tensor_value_info("ids", onnx.TensorProto.INT64, [4, 6]),
                                           h.make_tensor_value_info("mask", onnx.TensorProto.BOOL, [4, 6])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 6, 8])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def test_integer_and_bool_inputs(tmp_path):
    """Declared int64 / bool inputs: the vocabulary bound comes from the Gather's table; the
    synthetic batch draws valid ids and an all-true mask; integer data is never cast to float,
    float data for an integer input is refused naming it."""
    from lsuv_convert.batch.load import load_batch
    from lsuv_convert.formats import get_format

    onnx.save(_token_model(), str(tmp_path / "tokens.onnx"))
    loaded = get_format("onnx").load(tmp_path / "tokens.onnx")
    ids, mask = loaded.inputs
    assert (ids.dtype, ids.high, mask.dtype) == ("int64", 50, "bool")
    batch = load_batch(None, loaded.inputs, seed=0)
    assert batch.arrays[0].dtype == np.int64 and 0 <= batch.arrays[0].min() and batch.arrays[0].max() < 50
    assert batch.arrays[1].dtype == np.bool_ and batch.arrays[1].all()
    proc = invoke(tmp_path / "tokens.onnx", "-q")
    assert proc.returncode == 0, proc.stderr
    variances = ort_layer_variances(onnx.load(str(tmp_path / "tokens.lsuv.onnx")), {"ids": batch.arrays[0], "mask": batch.arrays[1]}, ["proj"])
    assert abs(variances["proj"] - 1) < TOL
    ids_data = np.random.default_rng(1).integers(0, 50, (4, 6))
    np.savez(tmp_path / "ints.npz", ids=ids_data.astype(np.int32), mask=np.ones((4, 6), bool))
    assert load_batch(tmp_path / "ints.npz", loaded.inputs).arrays[0].dtype == np.int64
    np.savez(tmp_path / "floats.npz", ids=ids_data.astype(np.float32), mask=np.ones((4, 6), bool))
    proc = invoke(tmp_path / "tokens.onnx", "--data", tmp_path / "floats.npz", "-o", tmp_path / "f.onnx")
    assert proc.returncode == 1 and "'ids'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "f.onnx").exists()


def test_region_between_layers_runs_in_onnxruntime(tmp_path):
    """An If (subgraph reading an outer value) between two convs: run by onnxruntime inside the
    torch graph; both convs initialized, the node list unchanged."""
    h, rng = onnx.helper, np.random.default_rng(8)
    then_g = h.make_graph([h.make_node("Relu", ["r"], ["t"])], "then", [], [h.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)])
    else_g = h.make_graph([h.make_node("Neg", ["r"], ["e"])], "else", [], [h.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)])
    nodes = [h.make_node("Conv", ["x", "w1"], ["r"], name="c1", pads=[1, 1, 1, 1]),
             h.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             h.make_node("Greater", ["total", "zero"], ["cond"]),
             h.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_g, else_branch=else_g),
             h.make_node("Conv", ["z", "w2"], ["y"], name="c2")]
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.standard_normal((5, 4, 1, 1)).astype(np.float32), "w2"),
             onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    graph = h.make_graph(nodes, "if", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3, 6, 6])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    src = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    onnx.save(src, str(tmp_path / "if.onnx"))
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6), dtype=np.float32)
    np.save(tmp_path / "if.npy", x)
    proc = invoke(tmp_path / "if.onnx", "-q", "--log", tmp_path / "if.json")
    assert proc.returncode == 0, proc.stderr
    out = onnx.load(str(tmp_path / "if.lsuv.onnx"))
    check_values_only(src, out)
    variances = ort_layer_variances(out, {"x": x}, ["c1", "c2"])
    assert all(abs(v - 1) < TOL for v in variances.values()), variances
    notes = json.loads((tmp_path / "if.json").read_text())["notes"]
    assert any("onnxruntime runs" in n and "If 'branch'" in n for n in notes), notes


def test_every_target_inside_onnxruntime_is_refused(tmp_path):
    """A model whose only layer torch can't convert (auto_pad SAME on an input of unknown size)
    would run wholly in onnxruntime: nothing to initialize, one line naming the layer."""
    h = onnx.helper
    conv = h.make_node("Conv", ["x", "w"], ["y"], name="same_conv", auto_pad="SAME_UPPER", strides=[2, 2])
    w = onnx.numpy_helper.from_array(np.random.default_rng(9).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = h.make_graph([conv], "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), str(tmp_path / "same.onnx"))
    np.save(tmp_path / "same.npy", np.random.default_rng(0).standard_normal((2, 3, 7, 7), dtype=np.float32))
    proc = invoke(tmp_path / "same.onnx")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "every target layer would run inside onnxruntime" in proc.stderr and "same_conv" in proc.stderr
    assert not (tmp_path / "same.lsuv.onnx").exists()


def test_quantized_graph_is_refused_naming_the_node(tmp_path):
    onnx.save(quantized_conv(), str(tmp_path / "q.onnx"))
    proc = invoke(tmp_path / "q.onnx")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "quantized" in proc.stderr and "dequant_w" in proc.stderr
    assert not (tmp_path / "q.lsuv.onnx").exists()


# ---------------------------------------------------------------- torch exports with post-processing


@pytest.fixture(scope="module")
def postprocessing(tmp_path_factory):
    folder = tmp_path_factory.mktemp("post") / "models"
    folder.mkdir()
    paths = export_postprocessing(folder)
    code, runs, stderr = _convert_folder(folder)
    return paths, code, runs, stderr


@pytest.mark.slow
def test_detection_and_segmentation_postprocessing_is_not_converted(postprocessing):
    paths, code, runs, stderr = postprocessing
    assert code == 0, stderr
    for path in paths.values():
        entry = runs[path.name]
        _check_written(path, entry, _feeds(onnx.load(str(path)), path.with_suffix(".npy")))
        assert any("feed no target layer" in n for n in entry["log"]["notes"]), entry["log"]["notes"]
    detector_notes = " ".join(runs["detector_nms.onnx"]["log"]["notes"])
    assert "NonMaxSuppression" in detector_notes and "TopK" in detector_notes
    assert len(runs["detector_nms.onnx"]["log"]["layers"]) == 4


# ---------------------------------------------------------------- transformers from configs, both exporters

TRANSFORMERS = ["bert", "gpt2", "vit", "wav2vec2", "segformer", "whisper_encoder"]
DYNAMO = ["bert", "segformer"]  # the dynamo exporter takes ~12 s a model here; the report script runs all of them


@pytest.fixture(scope="module")
def transformers_run(tmp_path_factory):
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tf") / "models"
    folder.mkdir()
    made = [export_transformer(name, "ts17", folder) for name in TRANSFORMERS]
    made += [export_transformer(name, "dy18", folder) for name in DYNAMO]
    code, runs, stderr = _convert_folder(folder)
    return made, code, runs, stderr


def _projections(model: onnx.ModelProto) -> list[str]:
    """Every MatMul / Gemm / Conv reading a stored weight: the attention and MLP projections."""
    stored = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def is_stored(name):
        while name in producers and producers[name].op_type in ("Identity", "Transpose", "Cast", "Reshape", "Constant"):
            if producers[name].op_type == "Constant":
                return True
            name = producers[name].input[0]
        return name in stored

    found, weights = [], set()
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 and is_stored(n.input[1]) and not is_stored(n.input[0]):
            if n.input[1] not in weights:  # a weight read again is that layer used again: scaled at its first use
                found.append(n.name or n.output[0])
            weights.add(n.input[1])
    return found


@pytest.mark.slow
def test_transformers_every_projection_initialized(transformers_run):
    made, code, runs, stderr = transformers_run
    assert code == 0, stderr
    for path in made:
        entry = runs[path.name]
        src = onnx.load(str(path))
        variances = _check_written(path, entry, _feeds(src, path.with_suffix(".npz")))
        assert sorted(variances) == sorted(_projections(src)), path.name  # every projection, each once
        assert any("fidelity gate passed" in n for n in entry["log"]["notes"])


@pytest.mark.slow
def test_transformers_integer_inputs_fed_as_integers(transformers_run, tmp_path):
    """BERT's int64 ids and mask are declared with the vocabulary bound found in the graph; the
    synthetic batch draws valid ids; a float batch for them is refused naming the input."""
    from lsuv_convert.formats import get_format

    made, _, _, _ = transformers_run
    bert = next(p for p in made if p.name == "bert_ts17.onnx")
    loaded = get_format("onnx").load(bert)
    specs = {s.name: s for s in loaded.inputs}
    assert specs["input_ids"].dtype == "int64" and specs["input_ids"].high == 100
    assert specs["attention_mask"].dtype == "int64"
    with np.load(bert.with_suffix(".npz")) as data:
        np.savez(tmp_path / "floats.npz", input_ids=data["input_ids"].astype(np.float32), attention_mask=data["attention_mask"])
    proc = invoke(bert, "--data", tmp_path / "floats.npz", "-o", tmp_path / "x.onnx")
    assert proc.returncode == 1 and "input_ids" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------- the onnx package's backend test models


def _backend_models() -> list[Path]:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    return sorted(root.glob("pytorch-*/*/model.onnx"))


@pytest.mark.slow
def test_onnx_backend_pytorch_models(tmp_path):
    """The PyTorch 0.3-era files (IR 3, opset 6/9) shipped with onnx: every one with a layer is
    initialized; the others are refused with 'nothing to initialize' only."""
    folder = tmp_path / "backend"
    folder.mkdir()
    for path in _backend_models():
        shutil.copy(path, folder / f"{path.parent.name}.onnx")
    code, runs, stderr = _convert_folder(folder)
    ok = [name for name, e in runs.items() if e["status"] == "ok"]
    failed = {name: e["error"] for name, e in runs.items() if e["status"] != "ok"}
    assert len(ok) >= 30, (ok, failed)
    for name, error in failed.items():
        assert "nothing to initialize" in error, (name, error)
    for name in ok:
        src = onnx.load(str(folder / name))
        inits = {t.name for t in src.graph.initializer}
        spec = next(i for i in src.graph.input if i.name not in inits)
        shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)  # the CLI's synthetic batch (seed 0)
        out = onnx.load(runs[name]["output"])
        check_values_only(src, out)
        if shape[0] * int(np.prod(shape[2:] or [1])) >= 8:  # enough samples for a variance of 1 to be measured as such
            variances = ort_layer_variances(out, {spec.name: x}, [layer["name"] for layer in runs[name]["log"]["layers"]])
            assert all(abs(v - 1) < TOL for v in variances.values()), (name, variances)


@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_layer_normalization_with_dynamic_shape(axis):
    """onnx2torch built nn.LayerNorm from inferred shapes: normalized_shape [0] for a dynamic
    dimension (SegFormer). Ours normalizes over the input's own trailing dims, scale broadcast."""
    import onnx2torch
    import onnxruntime as ort
    import torch

    from lsuv_convert.formats.onnx import convert as onnx_convert

    h, rng = onnx.helper, np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 6, 8)).astype(np.float32)
    norm_shape = x.shape[axis:]
    scale = rng.standard_normal(norm_shape[-1:]).astype(np.float32)  # broadcast over the normalized dims
    bias = rng.standard_normal(norm_shape).astype(np.float32)
    node = h.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=axis, epsilon=1e-5)
    graph = h.make_graph([node], "ln", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "C", "H", "W"])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(scale, "scale"), onnx.numpy_helper.from_array(bias, "bias")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    module = onnx2torch.convert(onnx_convert.working_copy(model)).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
