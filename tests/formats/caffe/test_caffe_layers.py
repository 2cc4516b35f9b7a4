"""Every supported Caffe layer type, built as a torch graph with random parameters, written
as a .caffemodel and compared with OpenCV's Caffe runtime on the same files. Where OpenCV
departs from Caffe (no Bias layer, LRN ignores k, InnerProduct ignores transpose, BatchNorm
without global stats is per-sample) the reference is Caffe's formula in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_helpers import (needs_opencv, assert_close, built_graph, build_small, caffe_format, input_layer, opencv_run, seeded_batch,
                           torch_layer_outputs, write_text)
from lsuv_convert.errors import ModelFormatError


S = (2, 4, 9, 9)
P = (2, 4, 10, 10)

# name -> (layers after the Input layer "data", input shape); the last layer's output is compared.
OPENCV_CASES = {
    "conv_hw_group": ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 '
                      'kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2 group: 2 } }', S),
    "conv_dilation_nobias": ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
                             'num_output: 4 kernel_size: 3 dilation: 2 pad: 2 bias_term: false } }', S),
    "conv_depthwise": ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
                       'num_output: 4 group: 4 kernel_size: 3 stride: 2 pad: 1 } }', S),
    "deconv": ('layer { name: "c" type: "Deconvolution" bottom: "data" top: "c" convolution_param { num_output: 6 '
               'kernel_size: 4 stride: 2 pad: 1 group: 2 } }', S),
    "inner_product": ('layer { name: "c" type: "InnerProduct" bottom: "data" top: "c" inner_product_param { num_output: 5 } }', S),
    "inner_product_axis2": ('layer { name: "c" type: "InnerProduct" bottom: "data" top: "c" '
                            'inner_product_param { num_output: 5 axis: 2 bias_term: false } }', S),
    "pool_max_ceil": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }', P),
    "pool_ave_ceil_clip": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }', P),
    "pool_ave_ceil": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }', P),
    "pool_ceil_mode_false": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }', P),
    "pool_round_mode_floor": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR } }', P),
    "pool_pad_over_half_kernel_ave": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 } }', P),
    "pool_pad_over_half_kernel_max": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 2 } }', (2, 4, 9, 9)),
    "pool_hw": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 } }', (2, 4, 10, 11)),
    "pool_global_ave": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE global_pooling: true } }', S),
    "pool_global_max": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX global_pooling: true } }', S),
    "relu": ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }', S),
    "relu_negative_slope": ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" relu_param { negative_slope: 0.1 } }', S),
    "prelu": ('layer { name: "r" type: "PReLU" bottom: "data" top: "r" }', S),
    "prelu_channel_shared": ('layer { name: "r" type: "PReLU" bottom: "data" top: "r" prelu_param { channel_shared: true } }', S),
    "elu": ('layer { name: "r" type: "ELU" bottom: "data" top: "r" elu_param { alpha: 0.7 } }', S),
    "tanh": ('layer { name: "r" type: "TanH" bottom: "data" top: "r" }', S),
    "sigmoid": ('layer { name: "r" type: "Sigmoid" bottom: "data" top: "r" }', S),
    "absval": ('layer { name: "r" type: "AbsVal" bottom: "data" top: "r" }', S),
    "bnll": ('layer { name: "r" type: "BNLL" bottom: "data" top: "r" }', S),
    "power": ('layer { name: "a" type: "AbsVal" bottom: "data" top: "a" } '
              'layer { name: "r" type: "Power" bottom: "a" top: "r" power_param { power: 1.5 scale: 2 shift: 0.5 } }', S),
    "lrn_across": ('layer { name: "r" type: "LRN" bottom: "data" top: "r" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }', S),
    "lrn_within": ('layer { name: "r" type: "LRN" bottom: "data" top: "r" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }', S),
    "dropout": ('layer { name: "r" type: "Dropout" bottom: "data" top: "r" dropout_param { dropout_ratio: 0.3 } }', S),
    "concat": ('layer { name: "a" type: "TanH" bottom: "data" top: "a" } '
               'layer { name: "r" type: "Concat" bottom: "data" bottom: "a" top: "r" concat_param { axis: 2 } }', S),
    "eltwise_sum_coeff": ('layer { name: "a" type: "TanH" bottom: "data" top: "a" } '
                          'layer { name: "r" type: "Eltwise" bottom: "data" bottom: "a" top: "r" eltwise_param { coeff: 0.5 coeff: -2 } }', S),
    "eltwise_prod": ('layer { name: "a" type: "TanH" bottom: "data" top: "a" } '
                     'layer { name: "r" type: "Eltwise" bottom: "data" bottom: "a" top: "r" eltwise_param { operation: PROD } }', S),
    "eltwise_max": ('layer { name: "a" type: "TanH" bottom: "data" top: "a" } '
                    'layer { name: "r" type: "Eltwise" bottom: "data" bottom: "a" top: "r" eltwise_param { operation: MAX } }', S),
    "slice": ('layer { name: "s" type: "Slice" bottom: "data" top: "s1" top: "s2" top: "s3" slice_param { axis: 1 slice_point: 1 slice_point: 3 } } '
              'layer { name: "r" type: "Eltwise" bottom: "s1" bottom: "s3" top: "r" eltwise_param { coeff: 1 coeff: -1 } }', S),
    "split": ('layer { name: "s" type: "Split" bottom: "data" top: "s1" top: "s2" } '
              'layer { name: "r" type: "Eltwise" bottom: "s1" bottom: "s2" top: "r" eltwise_param { operation: PROD } }', S),
    "flatten": ('layer { name: "r" type: "Flatten" bottom: "data" top: "r" flatten_param { axis: 2 } }', S),
    "reshape": ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 3 dim: 3 } } }', S),
    "batchnorm": ('layer { name: "r" type: "BatchNorm" bottom: "data" top: "r" batch_norm_param { eps: 0.001 } }', S),
    "scale_with_bias": ('layer { name: "r" type: "Scale" bottom: "data" top: "r" scale_param { bias_term: true } }', S),
    "scale_two_axes": ('layer { name: "r" type: "Scale" bottom: "data" top: "r" scale_param { num_axes: 2 } }', S),
    "scale_two_bottoms": ('layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: AVE global_pooling: true } } '
                          'layer { name: "f" type: "Flatten" bottom: "g" top: "f" } '
                          'layer { name: "r" type: "Scale" bottom: "data" bottom: "f" top: "r" scale_param { axis: 0 } }', S),
    "softmax": ('layer { name: "r" type: "Softmax" bottom: "data" top: "r" }', S),
    "softmax_axis": ('layer { name: "r" type: "Softmax" bottom: "data" top: "r" softmax_param { axis: 2 } }', S),
    "in_place_chain": ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 3 kernel_size: 1 } } '
                       'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" } '
                       'layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } } '
                       'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }', S),
}


def _net_text(body: str, shape) -> str:
    return 'name: "t"\n' + input_layer("data", shape) + body.replace("} layer", "}\nlayer") + "\n"


def _last_layer(graph):
    return graph.state.parsed.layers[-1].layer.name


@needs_opencv
@pytest.mark.parametrize("case", sorted(OPENCV_CASES))
def test_layer_matches_opencv(tmp_path, case):
    body, shape = OPENCV_CASES[case]
    text = _net_text(body, shape)
    if "round_mode" in text:  # OpenCV's schema spells it ceil_mode: give it the equivalent deploy
        proto, model, graph, batch = build_small(tmp_path, text, [shape])
        from lsuv_convert.formats.caffe.deploy import deploy_text

        proto = write_text(tmp_path, "opencv.prototxt",
                           deploy_text(graph.state.parsed, {"data": shape}, for_opencv=True))
        assert "ceil_mode: false" in proto.read_text()
    else:
        proto, model, graph, batch = build_small(tmp_path, text, [shape])
    targets, outs = torch_layer_outputs(graph, batch)
    names = [_last_layer(graph)] + list(targets)
    cv = opencv_run(proto, model, {"data": batch[0].numpy()}, names)
    assert_close(outs[-1], cv[0], what=case)
    for name, got in zip(targets, cv[1:]):
        assert_close(targets[name], got, what=f"{case} target {name}")


# -- layers where OpenCV is not Caffe: numpy references --------------------------------------

def _run(tmp_path, body, shapes, names=("data",)):
    text = 'name: "t"\n' + "".join(input_layer(n, s) for n, s in zip(names, shapes)) + body + "\n"
    proto, model, graph, batch = build_small(tmp_path, text, list(shapes))
    _, outs = torch_layer_outputs(graph, batch)
    return graph, [b.numpy().astype(np.float64) for b in batch], outs[-1]


def _param(graph, layer, attr):
    target = next(p for p in graph.state.built.param_layers if p.name == layer)
    ref = next(r for r in target.blobs if r.attribute == attr)
    from lsuv_convert.formats.caffe.write import blob_array

    return blob_array(graph.module, ref).astype(np.float64)


def test_inner_product_transpose_uses_caffes_k_by_n_blob(tmp_path):
    graph, (x,), out = _run(tmp_path, 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                                      'inner_product_param { num_output: 5 transpose: true } }', [S])
    w = _param(graph, "ip", "weight")
    assert w.shape == (4 * 9 * 9, 5)
    assert_close(out, x.reshape(2, -1) @ w + _param(graph, "ip", "bias"), rtol=1e-5)


def test_lrn_across_channels_with_k(tmp_path):
    graph, (x,), out = _run(tmp_path, 'layer { name: "r" type: "LRN" bottom: "data" top: "r" '
                                      'lrn_param { local_size: 5 alpha: 0.5 beta: 0.6 k: 2 } }', [(2, 7, 4, 4)])
    padded = np.pad(x ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(padded[:, i:i + 7] for i in range(5))
    assert_close(out, x * (2 + 0.5 / 5 * window) ** -0.6, rtol=1e-5)


def test_lrn_within_channel_ignores_k(tmp_path):
    graph, (x,), out = _run(tmp_path, 'layer { name: "r" type: "LRN" bottom: "data" top: "r" '
                                      'lrn_param { local_size: 3 alpha: 2 beta: 0.75 k: 5 norm_region: WITHIN_CHANNEL } }', [(1, 2, 5, 5)])
    padded = np.pad(x ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    mean = sum(padded[:, :, i:i + 5, j:j + 5] for i in range(3) for j in range(3)) / 9
    assert_close(out, x * (1 + 2 * mean) ** -0.75, rtol=1e-5)


def test_bias_layer_one_and_two_bottoms(tmp_path):
    graph, (x,), out = _run(tmp_path, 'layer { name: "b" type: "Bias" bottom: "data" top: "b" bias_param { axis: 1 num_axes: 2 } }', [S])
    assert_close(out, x + _param(graph, "b", "bias")[None, :, :, None], rtol=1e-6)
    graph, (x, y), out = _run(tmp_path, 'layer { name: "b" type: "Bias" bottom: "data" bottom: "y" top: "b" bias_param { axis: 2 } }',
                              [S, (9, 9)], names=("data", "y"))
    assert_close(out, x + y[None, None], rtol=1e-6)


def test_batchnorm_without_global_stats_uses_the_batch(tmp_path):
    graph, (x,), out = _run(tmp_path, 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
                                      'batch_norm_param { use_global_stats: false eps: 0.01 } }', [S])
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    assert_close(out, (x - mean) / np.sqrt(var + 0.01), rtol=1e-5)


def test_batchnorm_global_stats_divide_by_the_factor(tmp_path):
    graph, (x,), out = _run(tmp_path, 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }', [(3, 5)])
    s = 1.0 / _param(graph, "bn", "factor")[0]
    mean, var = _param(graph, "bn", "mean") * s, _param(graph, "bn", "variance") * s
    assert_close(out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5)


def test_two_bottom_scale_and_its_batch_shaped_bias(tmp_path):
    body = ('layer { name: "f" type: "Flatten" bottom: "y" top: "f" }\n'
            'layer { name: "s" type: "Scale" bottom: "data" bottom: "f" top: "s" scale_param { axis: 0 } }\n'
            'layer { name: "b" type: "Scale" bottom: "s" bottom: "f" top: "b" scale_param { axis: 0 bias_term: true } }')
    with pytest.raises(ModelFormatError, match="bias shape would depend on the batch size"):
        _run(tmp_path, body, [S, (2, 4, 1, 1)], names=("data", "y"))
    graph, (x, y), out = _run(tmp_path, body.rsplit("\n", 1)[0], [S, (2, 4, 1, 1)], names=("data", "y"))
    assert_close(out, x * y, rtol=1e-6)  # (N, 4) second bottom on axis 0


def test_dropout_scale_train_false_scales_at_test_time(tmp_path):
    graph, (x,), out = _run(tmp_path, 'layer { name: "d" type: "Dropout" bottom: "data" top: "d" '
                                      'dropout_param { dropout_ratio: 0.25 scale_train: false } }', [S])
    assert_close(out, x * 0.75, rtol=1e-6)


def test_pooling_rounding_against_caffes_loop(tmp_path):
    """Caffe's own loop: windows from i*stride - pad, clipped at size + pad for the divisor."""
    for method in ("AVE", "MAX"):
        for size, k, s, p in [(10, 3, 2, 2), (11, 3, 2, 1), (7, 2, 2, 1), (9, 3, 3, 2), (12, 4, 3, 0)]:
            body = (f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param {{ pool: {method} '
                    f'kernel_size: {k} stride: {s} pad: {p} }} }}')
            graph, (x,), out = _run(tmp_path, body, [(1, 2, size, size)])
            span = size + 2 * p - k
            o = -(-span // s) + 1
            if p and (o - 1) * s >= size + p:
                o -= 1
            ref = np.zeros((1, 2, o, o))
            for i in range(o):
                for j in range(o):
                    hs, ws = i * s - p, j * s - p
                    he, we = min(hs + k, size + p), min(ws + k, size + p)
                    win = x[:, :, max(hs, 0):min(he, size), max(ws, 0):min(we, size)]
                    ref[:, :, i, j] = win.max(axis=(2, 3)) if method == "MAX" else win.sum(axis=(2, 3)) / ((he - hs) * (we - ws))
            assert_close(out, ref, rtol=1e-6, what=f"{method} {size} {k} {s} {p}")


# -- shape and parameter errors ----------------------------------------------------------------

@pytest.mark.parametrize("body, fragment", [
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 kernel_size: 3 group: 3 } }',
     "layer 'c' (line 3): group 3 must divide both the input channels (4)"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 kernel_size: 30 } }',
     "does not fit the input"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 } }',
     "kernel_size is required"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 6 kernel_size: 3 kernel_h: 2 kernel_w: 2 } }',
     "either kernel_size or kernel_h/kernel_w"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 pad: 2 } }',
     "pad [2, 2] must be smaller than the kernel"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 1 stride: 3 } }',
     "starts outside the input"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { global_pooling: true kernel_size: 2 } }',
     "global_pooling"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: STOCHASTIC kernel_size: 2 } }',
     "STOCHASTIC"),
    ('layer { name: "a" type: "Pooling" bottom: "data" top: "a" pooling_param { kernel_size: 2 stride: 2 } }\n'
     'layer { name: "j" type: "Concat" bottom: "data" bottom: "a" top: "j" }', "can't be joined"),
    ('layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { slice_point: 7 } }', "slice_point"),
    ('layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" }', "doesn't split evenly"),
    ('layer { name: "a" type: "TanH" bottom: "data" top: "a" }\n'
     'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "a" top: "e" eltwise_param { coeff: 1 } }', "1 coeff values for 2 bottoms"),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 0 dim: 7 dim: -1 } } }', "can't reshape"),
    ('layer { name: "l" type: "LRN" bottom: "data" top: "l" lrn_param { local_size: 4 } }', "local_size must be odd"),
    ('layer { name: "w" type: "Reorg" bottom: "data" top: "w" }', "unknown layer type 'Reorg'"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 1 '
     'weight_filler { type: "orthogonal" } } }', "unknown filler type 'orthogonal'"),
])
def test_bad_layers_are_named_errors(tmp_path, body, fragment):
    path = write_text(tmp_path, "bad.prototxt", 'name: "t"\n' + input_layer("data", (2, 4, 8, 8)) + body + "\n")
    with pytest.raises(ModelFormatError) as err:
        built_graph(path)
    assert fragment in str(err.value)
    assert str(err.value).startswith(str(path))


# -- what LSUV sees -----------------------------------------------------------------------------

@needs_opencv
def test_lsuv_measures_the_conv_output_before_its_in_place_relu(tmp_path):
    from lsuv_convert import lsuv_init

    text = _net_text(OPENCV_CASES["in_place_chain"][0], (8, 4, 9, 9))
    fmt = caffe_format()
    proto = write_text(tmp_path, "n.prototxt", text)
    graph = fmt.load(proto)
    x = torch.from_numpy(seeded_batch((8, 4, 9, 9)))
    graph = fmt.prepare(graph, [x])
    lsuv_init(graph.module, (x,), targets=[t.module_path for t in graph.targets], seed=0, device="cpu")
    out = tmp_path / "n.caffemodel"
    fmt.save(graph, out)
    conv, relu = opencv_run(proto, out, {"data": x.numpy()}, ["c", "r"])
    assert abs(conv.var() - 1) < 0.02
    assert relu.min() >= 0 and relu.var() < 0.9  # the ReLU'd blob is not what was scaled


@needs_opencv
def test_shared_weights_by_param_name(tmp_path):
    body = ('layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" param { name: "w" } param { name: "b" } '
            'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n'
            'layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" param { name: "w" } param { name: "b" } '
            'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n')
    proto, model, graph, batch = build_small(tmp_path, _net_text(body, S), [S])
    assert [t.name for t in graph.targets] == ["c1"]
    assert graph.module.c1.weight is graph.module.c2.weight
    assert any("shares weight 'w'" in n for n in graph.notes)
    from lsuv_convert.formats.caffe.schema import caffe_pb

    written = caffe_pb.NetParameter.FromString(model.read_bytes())
    c1, c2 = written.layer
    assert list(c1.blobs[0].data) == list(c2.blobs[0].data)
    cv = opencv_run(proto, model, {"data": batch[0].numpy()}, ["c2"])
    assert_close(torch_layer_outputs(graph, batch)[1][0], cv[0])


@needs_opencv
def test_multi_bottom_convolution_shares_one_weight(tmp_path):
    body = ('layer { name: "t" type: "TanH" bottom: "data" top: "t" }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" bottom: "t" top: "c1" top: "c2" '
            'convolution_param { num_output: 3 kernel_size: 1 } }\n'
            'layer { name: "e" type: "Eltwise" bottom: "c1" bottom: "c2" top: "e" }\n')
    proto, model, graph, batch = build_small(tmp_path, _net_text(body, S), [S])
    assert [t.name for t in graph.targets] == ["c"]
    cv = opencv_run(proto, model, {"data": batch[0].numpy()}, ["e"])
    c1, c2 = torch_layer_outputs(graph, batch)[1]  # the Eltwise after the last target is left out
    assert_close(c1 + c2, cv[0])


def test_fillers_give_caffes_initial_values(tmp_path):
    body = ('layer { name: "x" type: "Convolution" bottom: "data" top: "x" convolution_param { num_output: 64 kernel_size: 3 '
            'weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.2 } } }\n'
            'layer { name: "m" type: "Convolution" bottom: "x" top: "m" convolution_param { num_output: 64 kernel_size: 3 '
            'weight_filler { type: "msra" variance_norm: FAN_OUT } } }\n'
            'layer { name: "g" type: "Convolution" bottom: "m" top: "g" convolution_param { num_output: 64 kernel_size: 1 '
            'weight_filler { type: "gaussian" std: 0.5 sparse: 16 } } }\n'
            'layer { name: "u" type: "Deconvolution" bottom: "g" top: "u" convolution_param { num_output: 64 group: 64 '
            'kernel_size: 4 stride: 2 bias_term: false weight_filler { type: "bilinear" } } }\n'
            'layer { name: "ball" type: "InnerProduct" bottom: "u" top: "ball" inner_product_param { num_output: 3 '
            'weight_filler { type: "positive_unitball" } bias_filler { type: "uniform" min: -1 max: -0.5 } } }\n'
            'layer { name: "sc" type: "Scale" bottom: "ball" top: "sc" scale_param { bias_term: true } }\n'
            'layer { name: "pr" type: "PReLU" bottom: "sc" top: "pr" }\n')
    graph = built_graph(write_text(tmp_path, "f.prototxt", _net_text(body, (1, 16, 8, 8))))
    m = graph.module
    bound = (3 / (16 * 9)) ** 0.5
    assert m.x.weight.abs().max() <= bound and m.x.weight.abs().max() > 0.9 * bound
    assert torch.allclose(m.x.bias, torch.full((64,), 0.2))
    assert m.m.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    nonzero = (m.g.weight != 0).float().mean().item()
    assert nonzero == pytest.approx(16 / 64, abs=0.05)
    assert torch.allclose(m.u.weight[0, 0, 0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert torch.allclose(m.ball.weight.sum(dim=1), torch.ones(3), atol=1e-5)
    assert ((m.ball.bias >= -1) & (m.ball.bias <= -0.5)).all()
    assert torch.equal(m.sc.weight, torch.ones(3)) and torch.equal(m.sc.bias, torch.zeros(3))
    assert torch.equal(m.pr.weight, torch.full((3,), 0.25))


@needs_opencv
def test_all_layer_types_in_one_net_convert_and_load_in_opencv(tmp_path):
    """The CLI path: load, LSUV, save; OpenCV then sees unit-variance targets in a net that chains
    every layer type OpenCV implements as Caffe does."""
    from lsuv_convert import lsuv_init

    text = ALL_LAYERS
    fmt = caffe_format()
    proto = write_text(tmp_path, "all.prototxt", text)
    graph = fmt.load(proto)
    x = torch.from_numpy(seeded_batch((8, 3, 17, 17)))
    graph = fmt.prepare(graph, [x])
    report = lsuv_init(graph.module, (x,), targets=[t.module_path for t in graph.targets], seed=0, device="cpu")
    assert all(layer.converged for layer in report.layers)
    out = tmp_path / "all.caffemodel"
    fmt.save(graph, out)
    names = [t.name for t in graph.targets]
    assert names == ["conv1", "conv2a", "conv2b", "deconv", "ip1", "ip2"]
    cv = opencv_run(proto, out, {"data": x.numpy()}, names + ["prob"])
    for name, value in zip(names, cv):
        assert abs(float(value.var()) - 1) < 0.02, name
    targets, outs = torch_layer_outputs(graph, [x])
    for name, value in zip(names, cv):
        assert_close(targets[name], value, what=name)
    assert_close(outs[0], cv[names.index("ip2")], what="net output")  # the Softmax after ip2 never runs
    assert any("prob (Softmax)" in n for n in graph.notes)


ALL_LAYERS = """
name: "all_layers"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 3 dim: 17 dim: 17 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "split" type: "Split" bottom: "conv1" top: "a" top: "b" }
layer { name: "conv2a" type: "Convolution" bottom: "a" top: "conv2a"
        convolution_param { num_output: 8 kernel_size: 3 dilation: 2 pad: 2 group: 2 } }
layer { name: "prelu" type: "PReLU" bottom: "conv2a" top: "conv2a" }
layer { name: "conv2b" type: "Convolution" bottom: "b" top: "conv2b" convolution_param { num_output: 8 kernel_size: 1 bias_term: false } }
layer { name: "elu" type: "ELU" bottom: "conv2b" top: "conv2b" }
layer { name: "sum" type: "Eltwise" bottom: "conv2a" bottom: "conv2b" top: "sum" eltwise_param { coeff: 0.5 coeff: 1.5 } }
layer { name: "lrn1" type: "LRN" bottom: "sum" top: "lrn1" lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "lrn1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "tanh" type: "TanH" bottom: "pool1" top: "pool1" }
layer { name: "deconv" type: "Deconvolution" bottom: "pool1" top: "deconv"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "deconv" top: "sig" }
layer { name: "lrn2" type: "LRN" bottom: "sig" top: "lrn2" lrn_param { local_size: 3 alpha: 0.1 norm_region: WITHIN_CHANNEL } }
layer { name: "pool2" type: "Pooling" bottom: "lrn2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "slice" type: "Slice" bottom: "pool2" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 1 } }
layer { name: "abs" type: "AbsVal" bottom: "s2" top: "s2abs" }
layer { name: "power" type: "Power" bottom: "s2abs" top: "s2pow" power_param { power: 1.5 scale: 2 shift: 0.1 } }
layer { name: "bnll" type: "BNLL" bottom: "s1" top: "s1b" }
layer { name: "concat" type: "Concat" bottom: "s1b" bottom: "s2pow" top: "cat" }
layer { name: "sq" type: "Eltwise" bottom: "cat" bottom: "cat" top: "sq" eltwise_param { operation: PROD } }
layer { name: "mx" type: "Eltwise" bottom: "sq" bottom: "cat" top: "mx" eltwise_param { operation: MAX } }
layer { name: "drop" type: "Dropout" bottom: "mx" top: "mx" dropout_param { dropout_ratio: 0.4 } }
layer { name: "flat" type: "Flatten" bottom: "mx" top: "flat" }
layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" inner_product_param { num_output: 12 } }
layer { name: "reshape" type: "Reshape" bottom: "ip1" top: "r" reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "r" top: "ip2" inner_product_param { num_output: 6 axis: 2 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" softmax_param { axis: 2 } }
"""
