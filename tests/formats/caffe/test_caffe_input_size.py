"""The batch's spatial size replaces the declared one, as Caffe's ``net.blobs['data'].reshape``
and OpenCV's ``setInput`` do: a fully convolutional net (FCN-like: convs, pooling, a learned
upsampling Deconvolution and a Crop back to the input) declared at 64×64 runs at any size, checked
by OpenCV at the batch's size; a net that can't take the batch's size is refused at the first
layer that can't, by name, with one line and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caffe_helpers import needs_opencv, opencv_run, seeded_batch, write_text
from conftest import run_cli

FCN = """name: "TinyFCN"
input: "data"
input_shape { dim: 1 dim: 3 dim: 64 dim: 64 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "score" type: "Convolution" bottom: "conv2" top: "score" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "upscore" type: "Deconvolution" bottom: "score" top: "upscore"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 bias_term: false } }
layer { name: "crop" type: "Crop" bottom: "upscore" bottom: "data" top: "out" crop_param { axis: 2 offset: 1 } }
"""

TARGETS = ["conv1", "conv2", "score", "upscore"]


@needs_opencv
@pytest.mark.parametrize("size", [(48, 80), (64, 64)])
def test_fully_convolutional_net_runs_at_the_batch_size(tmp_path, size):
    proto = write_text(tmp_path, "fcn.prototxt", FCN)
    batch = seeded_batch((6, 3, *size))
    np.save(tmp_path / "batch.npy", batch)
    out = tmp_path / "fcn.lsuv.caffemodel"
    proc = run_cli(proto, "--data", tmp_path / "batch.npy", "-o", out)
    assert proc.returncode == 0, proc.stderr
    outputs = opencv_run(proto, out, {"data": batch}, TARGETS + ["crop"])
    for name, value in zip(TARGETS, outputs):
        assert abs(float(np.var(value.astype(np.float64))) - 1.0) < 0.02, name
    assert outputs[-1].shape == (6, 4, *size)  # OpenCV ran it at the batch's size, cropped back to the input


LENET_LIKE = """name: "Classifier"
input: "data"
input_shape { dim: 1 dim: 1 dim: 28 dim: 28 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 5 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 10 } }
"""

SKIP_SUM = """name: "Skip"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool1" top: "up" convolution_param { num_output: 8 kernel_size: 2 stride: 2 } }
layer { name: "fuse" type: "Eltwise" bottom: "up" bottom: "conv1" top: "fused" }
layer { name: "score" type: "Convolution" bottom: "fused" top: "score" convolution_param { num_output: 2 kernel_size: 1 } }
"""


SEGNET_ODD = """name: "SegNetOdd"
input: "data"
input_shape { dim: 1 dim: 3 dim: 15 dim: 15 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up1"
        upsample_param { scale: 2 pad_out_h: true pad_out_w: true } }
layer { name: "conv2" type: "Convolution" bottom: "up1" top: "conv2" convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
"""


@pytest.mark.parametrize("text, shape, needles", [
    (SEGNET_ODD, (4, 3, 20, 22),  # pad_out is for odd sizes: at even ones the mask points outside the output
     ["layer 'up1' (line 6): its pooling mask points into a 20×22 plane, larger than the 19×21 it makes"]),
    (LENET_LIKE, (4, 1, 32, 32),
     ["layer 'ip1' (line 6): InnerProduct can't take the batch's input size", "(10, 784)", "(10, 576)",
      "'data' 1×32×32 instead of the declared 1×28×28"]),
    (SKIP_SUM, (4, 3, 33, 33),
     ["layer 'fuse' (line 7): bottom 'conv1' has shape (N, 8, 33, 33), 'up' has (N, 8, 34, 34)",
      "at the batch's input size ('data' 3×33×33 instead of the declared 3×32×32)"]),
])
def test_a_net_that_cant_take_the_size_names_the_layer(tmp_path, text, shape, needles):
    proto = write_text(tmp_path, "net.prototxt", text)
    np.save(tmp_path / "batch.npy", seeded_batch(shape))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli(proto, "--data", tmp_path / "batch.npy", "-o", tmp_path / "out.caffemodel")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lsuv-convert: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_declared_size_still_feeds_the_synthetic_batch(tmp_path):
    proto = write_text(tmp_path, "net.prototxt", LENET_LIKE)
    out = tmp_path / "net.lsuv.caffemodel"
    proc = run_cli(proto, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "(16, 1, 28, 28)" in proc.stdout + proc.stderr


def test_upsample_larger_than_its_mask_plane_runs_as_caffe_does(tmp_path):
    """ENet at a size its poolings round up: Upsample ×2 makes 22×24 from a mask over 21×23; every
    index stays in range, so Caffe runs it (the last row and column stay zero), and so does this."""
    text = SEGNET_ODD.replace("upsample_param { scale: 2 pad_out_h: true pad_out_w: true }", "upsample_param { scale: 2 }")
    proto = write_text(tmp_path, "enet_like.prototxt", text)
    np.save(tmp_path / "batch.npy", seeded_batch((6, 3, 21, 23)))
    log = tmp_path / "log.json"
    proc = run_cli(proto, "--data", tmp_path / "batch.npy", "-o", tmp_path / "out.caffemodel", "--log", log)
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(log.read_text())["layers"]
    assert [layer["name"] for layer in layers] == ["conv1", "conv2"]
    assert all(abs(layer["var_after"] - 1.0) < 0.02 for layer in layers)
