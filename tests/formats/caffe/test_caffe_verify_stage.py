"""``verify --stage``: a staged Caffe net (a deploy-only input scaling before the first conv, a
deploy-only head) is converted with ``--stage deploy``; OpenCV re-measures the written weights in
the net as that stage builds it. Without ``--stage`` verify measures the net as written (other
layers, other input scale) and says so with an out-of-tolerance exit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caffe_helpers import needs_opencv, write_text
from conftest import invoke


NET = '''name: "staged"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 3 dim: 8 dim: 8 } } }
layer { name: "pre" type: "Power" bottom: "data" top: "data" power_param { scale: 3 } include { stage: "deploy" } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "c_relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "head" type: "Convolution" bottom: "c" top: "head" convolution_param { num_output: 2 kernel_size: 1 }
  include { stage: "deploy" } }
'''


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("staged")
    proto = write_text(folder, "net.prototxt", NET)
    np.save(folder / "x.npy", np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    converted = invoke(proto, "--stage", "deploy", "--data", folder / "x.npy", "--device", "cpu", "-q",
                       "--log", folder / "log.json")
    assert converted.returncode == 0, converted.stderr
    return folder, proto


@needs_opencv
def test_verify_with_the_stage_measures_the_net_convert_built(staged):
    folder, _ = staged
    result = invoke("verify", folder / "net.lsuv.caffemodel", "--stage", "deploy", "--data", folder / "x.npy", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["layers"]
    log = json.loads((folder / "log.json").read_text())
    assert [r["name"] for r in rows] == [e["name"] for e in log["layers"]] == ["c", "head"]
    assert all(abs(r["var"] - 1) < 0.02 for r in rows), rows


@needs_opencv
def test_verify_with_prototxt_and_weights_takes_the_stage_too(staged):
    folder, proto = staged
    result = invoke("verify", proto, "--weights", folder / "net.lsuv.caffemodel", "--stage", "deploy",
                    "--data", folder / "x.npy", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["name"] for r in json.loads(result.stdout)["layers"]] == ["c", "head"]


@needs_opencv
def test_verify_without_the_stage_measures_the_net_as_written(staged):
    folder, _ = staged
    result = invoke("verify", folder / "net.lsuv.caffemodel", "--data", folder / "x.npy", "--json")
    assert result.returncode == 1  # no input scaling: c's variance is about 1/9
    rows = json.loads(result.stdout)["layers"]
    assert [r["name"] for r in rows] == ["c"] and rows[0]["var"] < 0.5
    assert "out of tolerance" in result.stderr
