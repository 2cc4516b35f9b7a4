"""The Caffe plug-in through the ``lsuv-convert`` console script: V1, solver and train/val
inputs end to end (checked by OpenCV), ``verify`` / ``inspect``, ``--weights`` and bad input."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from caffe_helpers import needs_opencv, shared_model, input_layer, opencv_run, seeded_batch, write_text
from conftest import run_cli


V1_NET = """name: "v1"
input: "data"
input_dim: 8 input_dim: 1 input_dim: 16 input_dim: 16
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 6 kernel_size: 5 weight_filler { type: "xavier" } } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "relu1" type: RELU bottom: "pool1" top: "pool1" }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "norm1" top: "ip1" inner_product_param { num_output: 10 } }
layers { name: "drop" type: DROPOUT bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.5 } }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2" inner_product_param { num_output: 4 } }
layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
"""

TRAIN_VAL = """name: "dummy_train_val"
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TEST }
        dummy_data_param { shape { dim: 10 dim: 2 dim: 12 dim: 12 } shape { dim: 10 } } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } transform_param { scale: 0.0039 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 5 kernel_size: 3 stride: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" include { phase: TRAIN } }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "up" convolution_param { num_output: 3 kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

SOLVER = """# a solver naming its net by path, relative to the solver
net: "nets/train_val.prototxt"
test_iter: 10
test_interval: 100
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 1000
momentum: 0.9
weight_decay: 0.0005
max_iter: 5000
snapshot_prefix: "snapshots/net"
solver_mode: CPU
type: "Nesterov"
"""


def _variances(prototxt, caffemodel, batch, names):
    return [float(v.astype(np.float64).var()) for v in opencv_run(prototxt, caffemodel, {"data": batch}, names)]


@needs_opencv
def test_v1_solver_and_train_val_files_end_to_end(tmp_path):
    v1 = write_text(tmp_path, "v1.prototxt", V1_NET)
    np.save(tmp_path / "v1.npy", seeded_batch((8, 1, 16, 16)))
    (tmp_path / "nets").mkdir()
    write_text(tmp_path / "nets", "train_val.prototxt", TRAIN_VAL)
    solver = write_text(tmp_path, "solver.prototxt", SOLVER)
    train_val = write_text(tmp_path, "dummy.prototxt", TRAIN_VAL)  # no batch: a seeded one of the DummyData shape
    result = run_cli(v1, solver, train_val, "--log", tmp_path / "logs", "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    for name in ("v1", "solver", "dummy"):
        assert (tmp_path / f"{name}.lsuv.caffemodel").is_file()

    # OpenCV reads the V1 prototxt itself (it upgrades V1 on its own) with our current-format weights
    names = ["conv1", "ip1", "ip2"]
    assert all(abs(v - 1) < 0.02 for v in _variances(v1, tmp_path / "v1.lsuv.caffemodel", np.load(tmp_path / "v1.npy"), names))

    # train/val and solver: OpenCV needs a deploy net; the log says what was replaced and dropped
    deploy = write_text(tmp_path, "deploy.prototxt", 'name: "deploy"\n' + input_layer("data", (10, 2, 12, 12)) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 5 kernel_size: 3 stride: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "up" convolution_param { num_output: 3 kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc" inner_product_param { num_output: 3 } }
""")
    batch = seeded_batch((16, 2, 12, 12), seed=0)  # the CLI's seeded batch: seed 0, free batch axis -> 16
    for name in ("solver", "dummy"):
        log = json.loads((tmp_path / "logs" / f"{name}.lsuv.caffemodel.json").read_text())
        assert [e["name"] for e in log["layers"]] == ["conv", "deconv", "fc"]
        assert any("dropped 2 loss/accuracy layer(s)" in n for n in log["notes"])
        variances = _variances(deploy, tmp_path / f"{name}.lsuv.caffemodel", batch, ["conv", "deconv", "fc"])
        assert all(abs(v - 1) < 0.02 for v in variances), (name, variances)
    solver_log = json.loads((tmp_path / "logs" / "solver.lsuv.caffemodel.json").read_text())
    assert any("net read from" in n and "train_val.prototxt" in n for n in solver_log["notes"])

    # verify re-measures with OpenCV, deriving the deploy net from the train/val file itself
    np.save(tmp_path / "batch.npy", batch)
    checked = run_cli("verify", train_val, "--weights", tmp_path / "dummy.lsuv.caffemodel",
                      "--data", tmp_path / "batch.npy", "--json")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and [r["name"] for r in report["layers"]] == ["conv", "deconv", "fc"]


@needs_opencv
def test_default_output_name_inspect_and_verify(tmp_path):
    model = tmp_path / "lenet.prototxt"
    shutil.copy(shared_model("lenet.prototxt"), model)
    np.save(tmp_path / "lenet.npy", seeded_batch((16, 1, 28, 28)))
    result = run_cli(model, "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "lenet.lsuv.caffemodel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.lsuv.caffemodel", "lenet.npy", "lenet.prototxt"]
    checked = run_cli("verify", out, "--json")  # finds lenet.prototxt beside it, and lenet.npy
    assert checked.returncode == 0, checked.stderr
    assert [r["name"] for r in json.loads(checked.stdout)["layers"]] == ["conv1", "conv2", "ip1", "ip2"]
    info = run_cli("inspect", model, "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["format"] == "caffe"
    assert [{k: i[k] for k in ("name", "shape")} for i in described["inputs"]] == [{"name": "data", "shape": [None, 1, 28, 28]}]
    assert [(t["name"], t["op"], t["weight_shape"]) for t in described["targets"]] == [
        ("conv1", "Convolution", [20, 1, 5, 5]), ("conv2", "Convolution", [50, 20, 5, 5]),
        ("ip1", "InnerProduct", [500, 800]), ("ip2", "InnerProduct", [10, 500])]


@needs_opencv
def test_weights_keep_in_place(tmp_path):
    model = tmp_path / "cifar.prototxt"
    shutil.copy(shared_model("cifar10_quick.prototxt"), model)
    np.save(tmp_path / "cifar.npy", seeded_batch((16, 3, 32, 32)))
    first = run_cli(model, "--device", "cpu", "-q", "--seed", 5, "--target-var", 4)
    assert first.returncode == 0, first.stderr
    weights = tmp_path / "cifar.lsuv.caffemodel"
    before = weights.read_bytes()
    again = run_cli(model, "--weights", weights, "--pre-init", "keep", "--in-place", "--force", "--device", "cpu", "-q",
                    "--log", tmp_path / "log.json")
    assert again.returncode == 0, again.stderr
    assert weights.read_bytes() != before and sorted(p.name for p in tmp_path.iterdir()) == [
        "cifar.lsuv.caffemodel", "cifar.npy", "cifar.prototxt", "log.json"]
    log = json.loads((tmp_path / "log.json").read_text())
    # kept weights gave variance 4 everywhere: halving conv1 brings it to 1, and since the net is
    # positively homogeneous (zero biases, ReLU, pooling) every later layer is then at 1 already
    first, *rest = log["layers"]
    assert first["name"] == "conv1" and abs(first["scale"] - 0.5) < 0.01 and first["iterations"] == 1
    assert rest and all(e["iterations"] == 0 and abs(e["var_before"] - 1) < 0.02 for e in rest), rest
    variances = _variances(model, weights, np.load(tmp_path / "cifar.npy"), ["conv1", "conv2", "conv3", "ip1", "ip2"])
    assert all(abs(v - 1) < 0.02 for v in variances)


BAD = {
    "syntax.prototxt": ('name: "x"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 8 dim: 8 }\n'
                        'layer {\n  name: "c"\n  type: "Convolution"\n  bottom: "data"\n  top "c"\n}\n',
                        "line 8, column 7: expected ':' or '{' after 'top'"),
    "unknown.prototxt": ('name: "x"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 8 dim: 8 }\n'
                         'layer { name: "warp1" type: "Warp" bottom: "data" top: "w" }\n',
                         "layer 'warp1' (line 4): unknown layer type 'Warp'"),
    "missing.prototxt": ('name: "x"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 8 dim: 8 }\n'
                         'layer { name: "c" type: "Convolution" bottom: "dta" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }\n',
                         "layer 'c' (line 4): bottom 'dta' is not produced by any earlier layer or input"),
}


def test_bad_prototxts_fail_with_one_line_and_write_nothing(tmp_path):
    paths = [write_text(tmp_path, name, text) for name, (text, _) in BAD.items()]
    result = run_cli(*paths, "--device", "cpu")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    for path, (_, fragment) in zip(paths, BAD.values()):
        assert any(str(path) in line and fragment in line for line in errors), (fragment, result.stderr)
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BAD)


def test_weights_of_another_net_fail_and_write_nothing(tmp_path):
    model = tmp_path / "lenet.prototxt"
    model.write_text((shared_model("lenet.prototxt")).read_text().replace("num_output: 500", "num_output: 300"))
    weights = tmp_path / "lenet.caffemodel"
    result = run_cli(shared_model("lenet.prototxt"), "-o", weights, "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out.caffemodel"
    failed = run_cli(model, "--weights", weights, "-o", out, "--device", "cpu")
    assert failed.returncode != 0
    assert ("layer 'ip1' (line 76): its weight blob in lenet.caffemodel has shape (500, 800), the net expects (300, 800)"
            in failed.stderr)
    assert len([line for line in failed.stderr.splitlines() if line.strip()]) == 1
    assert not out.exists()


@needs_opencv
def test_measure_without_opencv_is_a_clear_error(tmp_path, monkeypatch):
    from caffe_helpers import caffe_format
    from lsuv_convert.errors import LsuvError

    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv-python-headless were absent
    with pytest.raises(LsuvError, match=r"pip install 'lsuv-convert\[opencv\]'"):
        caffe_format().measure(shared_model("lenet.prototxt"), tmp_path / "w.caffemodel",
                               [seeded_batch((2, 1, 28, 28))], ["conv1"])


def test_in_place_rewrites_the_weights_never_the_prototxt(tmp_path):
    from caffe_helpers import caffe_format

    fmt = caffe_format()
    assert fmt.in_place_output(tmp_path / "a.prototxt", tmp_path / "w.caffemodel") == tmp_path / "w.caffemodel"
    assert fmt.in_place_output(tmp_path / "a.prototxt", None) == tmp_path / "a.caffemodel"
    assert fmt.default_output(tmp_path / "a.prototxt") == tmp_path / "a.lsuv.caffemodel"
