"""Nets of the kinds public Caffe zoos hold, written here, tiny (few channels, small images):
an FCN (Crop, skip fusion), an SSD (Normalize, heads, then Permute / PriorBox / DetectionOutput),
a ShuffleNet unit (group conv, ShuffleChannel, ConvolutionDepthwise), a SegNet / ENet net (BN,
pooling mask, Upsample) and an SE-ResNet block with Axpy. LSUV runs on each; where OpenCV can load
the net, OpenCV measures every target's variance in the written files; where it can't, the written
.caffemodel is read back with ``--weights`` and the targets are measured there. Also: the tail after
the last target is left out, data layers by role, stages, and the Caffe recipe of docs/formats.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from caffe_helpers import needs_opencv, caffe_format, opencv_run, seeded_batch, write_text
from conftest import invoke
from lsuv_convert.errors import ModelFormatError


TOL = 0.02


def _input(shape, name="data"):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def _conv(name, bottom, n, k=3, pad=1, stride=1, extra="", top=None):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" '
            f'convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} stride: {stride} {extra} }} }}\n')


def _relu(blob):
    return f'layer {{ name: "{blob}_relu" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


FCN = ('name: "tiny_fcn"\n' + _input((4, 3, 24, 24))
       + _conv("conv1", "data", 6, pad=10) + _relu("conv1")
       + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
       + _conv("conv2", "pool1", 8) + _relu("conv2")
       + 'layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
       + _conv("score", "pool2", 3, pad=0)
       + 'layer { name: "upscore2" type: "Deconvolution" bottom: "score" top: "upscore2" '
         'convolution_param { num_output: 3 kernel_size: 4 stride: 2 bias_term: false } }\n'
       + _conv("score_pool1", "pool1", 3, k=1, pad=0)
       + 'layer { name: "score_pool1c" type: "Crop" bottom: "score_pool1" bottom: "upscore2" top: "score_pool1c" '
         'crop_param { axis: 2 offset: 1 } }\n'
       + 'layer { name: "fuse" type: "Eltwise" bottom: "upscore2" bottom: "score_pool1c" top: "fuse" }\n'
       + 'layer { name: "upscore" type: "Deconvolution" bottom: "fuse" top: "upscore" '
         'convolution_param { num_output: 3 kernel_size: 4 stride: 2 bias_term: false } }\n'
       + 'layer { name: "scorec" type: "Crop" bottom: "upscore" bottom: "data" top: "scorec" crop_param { axis: 2 offset: 9 } }\n'
       + 'layer { name: "argmax" type: "ArgMax" bottom: "scorec" top: "label" argmax_param { axis: 1 } }\n')

SSD = ('name: "tiny_ssd"\n' + _input((4, 3, 32, 32))
       + _conv("conv1", "data", 8) + _relu("conv1")
       + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
       + _conv("conv4_3", "pool1", 8) + _relu("conv4_3")
       + 'layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm" '
         'norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }\n'
       + _conv("conv4_3_norm_mbox_loc", "conv4_3_norm", 16)  # 4 priors per place: 1 + max_size + 2 ratios
       + _conv("conv4_3_norm_mbox_conf", "conv4_3_norm", 12)
       + 'layer { name: "pool2" type: "Pooling" bottom: "conv4_3" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
       + _conv("fc7", "pool2", 8) + _relu("fc7")
       + _conv("fc7_mbox_loc", "fc7", 16)
       + _conv("fc7_mbox_conf", "fc7", 12)
       + "".join(f'layer {{ name: "{h}_perm" type: "Permute" bottom: "{h}" top: "{h}_perm" '
                 f'permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                 f'layer {{ name: "{h}_flat" type: "Flatten" bottom: "{h}_perm" top: "{h}_flat" }}\n'
                 for h in ("conv4_3_norm_mbox_loc", "conv4_3_norm_mbox_conf", "fc7_mbox_loc", "fc7_mbox_conf"))
       + "".join(f'layer {{ name: "{f}_mbox_priorbox" type: "PriorBox" bottom: "{f}" bottom: "data" top: "{f}_mbox_priorbox" '
                 f'prior_box_param {{ min_size: {s} max_size: {2 * s} aspect_ratio: 2 flip: true clip: false '
                 'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 } }\n'
                 for f, s in (("conv4_3_norm", 8), ("fc7", 16)))
       + 'layer { name: "mbox_loc" type: "Concat" bottom: "conv4_3_norm_mbox_loc_flat" bottom: "fc7_mbox_loc_flat" top: "mbox_loc" }\n'
       + 'layer { name: "mbox_conf" type: "Concat" bottom: "conv4_3_norm_mbox_conf_flat" bottom: "fc7_mbox_conf_flat" top: "mbox_conf" }\n'
       + 'layer { name: "mbox_priorbox" type: "Concat" bottom: "conv4_3_norm_mbox_priorbox" bottom: "fc7_mbox_priorbox" '
         'top: "mbox_priorbox" concat_param { axis: 2 } }\n'
       + 'layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape" '
         'reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }\n'
       + 'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax" softmax_param { axis: 2 } }\n'
       + 'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten" }\n'
       + 'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten" '
         'bottom: "mbox_priorbox" top: "detection_out" include { phase: TEST } detection_output_param { num_classes: 3 '
         'share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 20 } code_type: CENTER_SIZE '
         'keep_top_k: 10 confidence_threshold: 0.01 } }\n')

SHUFFLENET = ('name: "tiny_shufflenet"\n' + _input((4, 3, 16, 16))
              + _conv("conv1", "data", 8, stride=2) + _relu("conv1")
              + _conv("gconv1", "conv1", 8, k=1, pad=0, extra="group: 2 bias_term: false")
              + 'layer { name: "gconv1_bn" type: "BatchNorm" bottom: "gconv1" top: "gconv1" }\n'
              + 'layer { name: "gconv1_scale" type: "Scale" bottom: "gconv1" top: "gconv1" scale_param { bias_term: true } }\n'
              + _relu("gconv1")
              + 'layer { name: "shuffle" type: "ShuffleChannel" bottom: "gconv1" top: "shuffle" shuffle_channel_param { group: 2 } }\n'
              + 'layer { name: "dwconv" type: "ConvolutionDepthwise" bottom: "shuffle" top: "dwconv" '
                'convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }\n'
              + _conv("gconv2", "dwconv", 8, k=1, pad=0, extra="group: 2")
              + 'layer { name: "add" type: "Eltwise" bottom: "conv1" bottom: "gconv2" top: "add" }\n' + _relu("add")
              + 'layer { name: "pool" type: "Pooling" bottom: "add" top: "pool" pooling_param { pool: AVE global_pooling: true } }\n'
              + 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }\n'
              + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')

SEGNET = ('name: "tiny_segnet_enet"\n' + _input((4, 3, 15, 15))
          + _conv("conv1", "data", 6)
          + 'layer { name: "conv1_bn" type: "BN" bottom: "conv1" top: "conv1" '
            'bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } } }\n'
          + 'layer { name: "conv1_prelu" type: "PReLU" bottom: "conv1" top: "conv1" }\n'
          + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
          + _conv("conv2", "pool1", 6)
          + 'layer { name: "conv2_bn" type: "BN" bottom: "conv2" top: "conv2" bn_param { bn_mode: INFERENCE } }\n' + _relu("conv2")
          + 'layer { name: "upsample1" type: "Upsample" bottom: "conv2" bottom: "pool1_mask" top: "up1" '
            'upsample_param { scale: 2 pad_out_h: true pad_out_w: true } }\n'
          + _conv("conv1_D", "up1", 6)
          + 'layer { name: "conv1_D_bn" type: "BN" bottom: "conv1_D" top: "conv1_D" '
            'bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0 } } }\n'
          + _relu("conv1_D")
          + 'layer { name: "fullconv" type: "Deconvolution" bottom: "conv1_D" top: "fullconv" '
            'convolution_param { num_output: 4 kernel_size: 2 stride: 2 } }\n'
          + 'layer { name: "prob" type: "Softmax" bottom: "fullconv" top: "prob" }\n'
          + 'layer { name: "argmax" type: "ArgMax" bottom: "prob" top: "label" argmax_param { axis: 1 } }\n')

SE_RESNET = ('name: "tiny_se_resnet"\n' + _input((4, 3, 12, 12))
             + _conv("conv1", "data", 8) + _relu("conv1")
             + _conv("res_a", "conv1", 8)
             + 'layer { name: "res_a_bn" type: "BatchNorm" bottom: "res_a" top: "res_a" }\n'
             + 'layer { name: "res_a_scale" type: "Scale" bottom: "res_a" top: "res_a" scale_param { bias_term: true } }\n'
             + 'layer { name: "se_pool" type: "Pooling" bottom: "res_a" top: "se_pool" pooling_param { pool: AVE global_pooling: true } }\n'
             + _conv("se_down", "se_pool", 2, k=1, pad=0) + _relu("se_down")
             + _conv("se_up", "se_down", 8, k=1, pad=0)
             + 'layer { name: "se_prob" type: "Sigmoid" bottom: "se_up" top: "se_up" }\n'
             + 'layer { name: "axpy" type: "Axpy" bottom: "se_up" bottom: "res_a" bottom: "conv1" top: "res" }\n' + _relu("res")
             + 'layer { name: "pool" type: "Pooling" bottom: "res" top: "pool" pooling_param { pool: AVE global_pooling: true } }\n'
             + 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }\n'
             + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')

NETS = {  # name -> (prototxt, batch shape, OpenCV can load it, targets)
    "fcn": (FCN, (4, 3, 24, 24), True, ["conv1", "conv2", "score", "upscore2", "score_pool1", "upscore"]),
    "ssd": (SSD, (4, 3, 32, 32), True, ["conv1", "conv4_3", "conv4_3_norm_mbox_loc", "conv4_3_norm_mbox_conf", "fc7",
                                         "fc7_mbox_loc", "fc7_mbox_conf"]),
    "shufflenet": (SHUFFLENET, (4, 3, 16, 16), True, ["conv1", "gconv1", "dwconv", "gconv2", "fc"]),
    "segnet_enet": (SEGNET, (4, 3, 15, 15), False, ["conv1", "conv2", "conv1_D", "fullconv"]),
    "se_resnet_axpy": (SE_RESNET, (4, 3, 12, 12), False, ["conv1", "res_a", "se_down", "se_up", "fc"]),
}


def _lsuv(tmp_path, name):
    from lsuv_convert import lsuv_init

    text, shape, _, _ = NETS[name]
    fmt = caffe_format()
    proto = write_text(tmp_path, f"{name}.prototxt", text)
    x = torch.from_numpy(seeded_batch(shape))
    graph = fmt.prepare(fmt.load(proto), [x])
    report = lsuv_init(graph.module, (x,), targets=[t.module_path for t in graph.targets], seed=0, device="cpu")
    out = tmp_path / f"{name}.caffemodel"
    fmt.save(graph, out)
    return proto, out, graph, report, x


@needs_opencv
@pytest.mark.parametrize("name", sorted(NETS))
def test_zoo_kind_converts_and_its_targets_have_unit_variance(tmp_path, name):
    text, shape, opencv_loads, targets = NETS[name]
    proto, out, graph, report, x = _lsuv(tmp_path, name)
    assert [t.name for t in graph.targets] == targets
    assert all(layer.converged for layer in report.layers), report.layers
    if opencv_loads:  # the whole prototxt as written here (tail included; OpenCV has no ArgMax), run by OpenCV
        lines = [line for line in text.splitlines() if 'type: "ArgMax"' not in line]
        cv_proto = write_text(tmp_path, "opencv.prototxt", "\n".join(lines) + "\n")
        outs = opencv_run(cv_proto, out, {"data": x.numpy()}, targets)
    else:  # the written blobs read back (--weights) into a new graph: every layer's blobs are there
        fmt = caffe_format()
        again = fmt.prepare(fmt.load(proto, weights=out), [x])
        assert not any("start from their fillers" in n for n in again.notes), again.notes
        from caffe_helpers import torch_layer_outputs

        captured, _ = torch_layer_outputs(again, [x])
        outs = [captured[t] for t in targets]
    for target, value in zip(targets, outs):
        assert abs(float(np.asarray(value, dtype=np.float64).var()) - 1) < TOL, target


def test_ssd_tail_is_left_out_and_named(tmp_path):
    fmt = caffe_format()
    loaded = fmt.load(write_text(tmp_path, "ssd.prototxt", SSD))
    note = next(n for n in loaded.notes if n.startswith("left out"))
    for part in ("left out 17 layer(s)", "2 PriorBox", "1 DetectionOutput", "detection_out (DetectionOutput)"):
        assert part in note
    ran = [e.layer.type for e in loaded.state.parsed.layers]
    assert "Normalize" in ran and "PriorBox" not in ran and "Permute" not in ran


@needs_opencv
@pytest.mark.slow
def test_ssd_through_the_cli_and_verify(tmp_path):
    proto = write_text(tmp_path, "ssd.prototxt", SSD)
    np.save(tmp_path / "ssd.npy", seeded_batch((4, 3, 32, 32)))
    result = invoke(proto, "--device", "cpu", "-q", "--log", tmp_path / "ssd.json")
    assert result.returncode == 0, result.stderr
    log = json.loads((tmp_path / "ssd.json").read_text())
    assert any("DetectionOutput" in n for n in log["notes"])
    checked = invoke("verify", tmp_path / "ssd.lsuv.caffemodel", "--json")
    assert checked.returncode == 0, checked.stderr
    assert len(json.loads(checked.stdout)["layers"]) == 7


def test_unknown_types_after_the_last_target_are_left_out_before_it_are_errors(tmp_path):
    body = _input((2, 3, 8, 8)) + _conv("c1", "data", 4) + _conv("c2", "c1", 4)
    fmt = caffe_format()
    tail = write_text(tmp_path, "tail.prototxt", body
                      + 'layer { name: "mine" type: "MyFancyDecoder" bottom: "c2" top: "d" my_fancy_param { k: 3 } }\n'
                      + 'layer { name: "side" type: "MyPriors" bottom: "c1" top: "p" }\n')
    graph = fmt.prepare(fmt.load(tail), [torch.zeros(2, 3, 8, 8)])
    assert any("mine (MyFancyDecoder)" in n and "side (MyPriors)" in n for n in graph.notes)
    before = write_text(tmp_path, "before.prototxt", _input((2, 3, 8, 8)) + _conv("c1", "data", 4)
                        + 'layer { name: "mine" type: "MyFancyDecoder" bottom: "c1" top: "d" }\n' + _conv("c2", "d", 4))
    with pytest.raises(ModelFormatError) as err:
        fmt.load(before)
    assert str(err.value) == f"{before}: layer 'mine' (line 3): unknown layer type 'MyFancyDecoder'"


@needs_opencv
def test_tail_layers_with_parameters_are_written(tmp_path):
    """A BatchNorm / Scale / PReLU after the last conv never runs, but its blobs are in the file,
    so OpenCV (which needs them) loads the whole net."""
    text = (_input((2, 3, 8, 8)) + _conv("c1", "data", 4)
            + 'layer { name: "bn" type: "BatchNorm" bottom: "c1" top: "c1" }\n'
            + 'layer { name: "sc" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }\n'
            + 'layer { name: "pr" type: "PReLU" bottom: "c1" top: "c1" }\n')
    proto = write_text(tmp_path, "t.prototxt", text)
    fmt = caffe_format()
    x = torch.from_numpy(seeded_batch((2, 3, 8, 8)))
    graph = fmt.prepare(fmt.load(proto), [x])
    assert [n.op for n in graph.module.graph.nodes] == ["placeholder", "call_module", "output"]
    out = tmp_path / "t.caffemodel"
    fmt.save(graph, out)
    from lsuv_convert.formats.caffe.schema import caffe_pb

    assert [layer.name for layer in caffe_pb.NetParameter.FromString(out.read_bytes()).layer] == ["c1", "bn", "sc", "pr"]
    (pr,) = opencv_run(proto, out, {"data": x.numpy()}, ["pr"])
    assert pr.shape == (2, 4, 8, 8)


def test_data_layers_by_role_and_stages(tmp_path):
    text = """name: "roles"
state { stage: "val" }
layer { name: "data" type: "DenseImageData" top: "data" top: "label"
        dense_image_data_param { source: "list.txt" batch_size: 4 shuffle: true } }
layer { name: "aux" type: "MyPythonishData" top: "aux" my_data_param { source: "x" } include { stage: "aux" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "conv_aux" type: "Convolution" bottom: "aux" top: "conv_aux" include { stage: "aux" }
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "deploy_only" type: "Convolution" bottom: "conv" top: "d" exclude { stage: "val" }
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
"""
    proto = write_text(tmp_path, "roles.prototxt", text)
    fmt = caffe_format()
    plain = fmt.load(proto)
    assert [i.name for i in plain.inputs] == ["data"] and [t.name for t in plain.targets] == ["conv"]
    assert any("'data' replaced by the given batch" in n for n in plain.notes)
    staged = fmt.load(proto, stages=("aux",))
    assert [i.name for i in staged.inputs] == ["data", "aux"]
    assert [t.name for t in staged.targets] == ["conv", "conv_aux"]
    info = invoke("inspect", proto, "--stage", "aux", "--json")
    assert info.returncode == 0, info.stderr
    assert [t["name"] for t in json.loads(info.stdout)["targets"]] == ["conv", "conv_aux"]


def test_solver_test_state_stage(tmp_path):
    write_text(tmp_path, "net.prototxt", _input((2, 3, 8, 8)) + _conv("c", "data", 2)
               + _conv("deploy_head", "c", 2).replace("} }\n", "} include { stage: \"deploy\" } }\n"))
    solver = write_text(tmp_path, "solver.prototxt", 'net: "net.prototxt"\nbase_lr: 0.01\ntest_state { stage: "deploy" }\n')
    assert [t.name for t in caffe_format().load(solver).targets] == ["c", "deploy_head"]


FITNET_MNIST_LIKE = """# like sample_models/fitnet_mnist.prototxt: maxout as two convolutions joined by Eltwise MAX
name: "FitNet_MNIST_tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 16 dim: 1 dim: 12 dim: 12 } } }
layer { name: "conv1a" type: "Convolution" bottom: "data" top: "conv1a" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conv1b" type: "Convolution" bottom: "data" top: "conv1b" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conv1" type: "Eltwise" bottom: "conv1a" bottom: "conv1b" top: "conv1" eltwise_param { operation: MAX } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 4 stride: 2 } }
layer { name: "ip1a" type: "InnerProduct" bottom: "pool1" top: "ip1a" inner_product_param { num_output: 6 } }
layer { name: "ip1b" type: "InnerProduct" bottom: "pool1" top: "ip1b" inner_product_param { num_output: 6 } }
layer { name: "ip1" type: "Eltwise" bottom: "ip1a" bottom: "ip1b" top: "ip1" eltwise_param { operation: MAX } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


@needs_opencv
def test_readme_quick_start_for_caffe(tmp_path):
    """``lsuv-convert NAME.prototxt`` with ``NAME.npy`` beside it, then ``verify``: the
    sample_models/fitnet_mnist.prototxt run of docs/formats.md (Caffe, Verify), on a net built here."""
    proto = write_text(tmp_path, "fitnet_mnist.prototxt", FITNET_MNIST_LIKE)
    np.save(tmp_path / "fitnet_mnist.npy", seeded_batch((16, 1, 12, 12)))
    result = invoke(proto, "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "fitnet_mnist.lsuv.caffemodel"
    checked = invoke("verify", out, "--json")
    assert checked.returncode == 0, checked.stderr
    layers = json.loads(checked.stdout)["layers"]
    assert [r["name"] for r in layers] == ["conv1a", "conv1b", "ip1a", "ip1b", "ip2"]
    outs = opencv_run(proto, out, {"data": np.load(tmp_path / "fitnet_mnist.npy")}, [r["name"] for r in layers])
    assert all(abs(float(o.astype(np.float64).var()) - 1) < TOL for o in outs)


def test_convert_with_stage_option(tmp_path):
    proto = write_text(tmp_path, "net.prototxt", _input((8, 3, 8, 8)) + _conv("c", "data", 2)
                       + _conv("deploy_head", "c", 2).replace("} }\n", "} include { stage: \"deploy\" } }\n"))
    plain = invoke(proto, "--device", "cpu", "-q", "--json", "-o", tmp_path / "plain.caffemodel")
    staged = invoke(proto, "--stage", "deploy", "--device", "cpu", "-q", "--json", "-o", tmp_path / "staged.caffemodel")
    assert plain.returncode == 0 and staged.returncode == 0, plain.stderr + staged.stderr
    assert json.loads(plain.stdout)["layers"] == 1 and json.loads(staged.stdout)["layers"] == 2
    from lsuv_convert.formats.caffe.schema import caffe_pb

    written = caffe_pb.NetParameter.FromString((tmp_path / "staged.caffemodel").read_bytes())
    assert [layer.name for layer in written.layer] == ["c", "deploy_head"]


def test_tail_layers_that_cannot_be_built_are_left_out_cleanly(tmp_path):
    """A tail Crop that doesn't fit, an unknown type and what depends on it: nothing of them is
    in the graph or the file; a tail Scale that can be built is written."""
    text = (_input((2, 3, 8, 8)) + _conv("c1", "data", 4)
            + 'layer { name: "sc" type: "Scale" bottom: "c1" top: "s" scale_param { bias_term: true } }\n'
            + 'layer { name: "pool" type: "Pooling" bottom: "s" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            + 'layer { name: "badcrop" type: "Crop" bottom: "p" bottom: "data" top: "cr" }\n'
            + 'layer { name: "after" type: "Scale" bottom: "cr" top: "cr2" }\n'
            + 'layer { name: "mystery" type: "Mystery" bottom: "s" top: "m" }\n'
            + 'layer { name: "prelu" type: "PReLU" bottom: "m" top: "m2" }\n')
    proto = write_text(tmp_path, "t.prototxt", text)
    fmt = caffe_format()
    graph = fmt.prepare(fmt.load(proto), [torch.zeros(2, 3, 8, 8)])
    assert [name for name, _ in graph.module.named_children()] == ["c1", "sc"]
    assert [n.op for n in graph.module.graph.nodes] == ["placeholder", "call_module", "output"]
    out = tmp_path / "t.caffemodel"
    fmt.save(graph, out)
    from lsuv_convert.formats.caffe.schema import caffe_pb

    assert [layer.name for layer in caffe_pb.NetParameter.FromString(out.read_bytes()).layer] == ["c1", "sc"]
    note = next(n for n in graph.notes if n.startswith("left out"))
    assert "1 Mystery" in note and "badcrop (Crop)" in note
