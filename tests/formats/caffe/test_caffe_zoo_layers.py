"""The layer types added for real Caffe zoos: the rest of BVLC's computing layers and the fork
layers (SSD, ShuffleNet, SegNet / ENet, DeepLab, SE-Net). Where OpenCV implements a layer as
Caffe does, OpenCV on the written files is the reference; elsewhere a numpy implementation of the
layer's forward pass written from the Caffe (or fork) source, itself checked on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caffe_helpers import (needs_opencv, assert_close, build_small, caffe_format, input_layer, opencv_run, torch_layer_outputs,
                           write_text)
from lsuv_convert.errors import ModelFormatError


S = (2, 4, 6, 6)


def _net(body: str, shape=S, name: str = "data") -> str:
    return 'name: "t"\n' + input_layer(name, shape) + body + "\n"


def _opencv_deploy(tmp_path, graph, shapes):
    """The deploy OpenCV reads (depthwise layers as grouped Convolution), as ``verify`` writes it."""
    from lsuv_convert.formats.caffe.deploy import deploy_text

    return write_text(tmp_path, "opencv.prototxt", deploy_text(graph.state.parsed, shapes, for_opencv=True))


# name -> layers after the Input "data"; the last layer's output is compared with OpenCV's.
OPENCV_CASES = {
    "crop": 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "r" type: "Crop" bottom: "data" bottom: "p" top: "r" crop_param { axis: 2 offset: 1 offset: 2 } }',
    "crop_one_offset_for_all_axes": 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 3 } }\n'
                                    'layer { name: "r" type: "Crop" bottom: "data" bottom: "p" top: "r" crop_param { offset: 3 } }',
    "permute": 'layer { name: "r" type: "Permute" bottom: "data" top: "r" permute_param { order: 0 order: 2 order: 3 order: 1 } }',
    "normalize_per_channel": 'layer { name: "r" type: "Normalize" bottom: "data" top: "r" '
                             'norm_param { across_spatial: false channel_shared: false } }',
    "normalize_across_spatial_shared": 'layer { name: "r" type: "Normalize" bottom: "data" top: "r" }',
    "shuffle_channel": 'layer { name: "r" type: "ShuffleChannel" bottom: "data" top: "r" shuffle_channel_param { group: 2 } }',
    "interp_zoom": 'layer { name: "r" type: "Interp" bottom: "data" top: "r" interp_param { zoom_factor: 3 } }',
    "interp_height_width": 'layer { name: "r" type: "Interp" bottom: "data" top: "r" interp_param { height: 11 width: 4 } }',
    "relu6": 'layer { name: "r" type: "ReLU6" bottom: "data" top: "r" }',
    "exp_base": 'layer { name: "r" type: "Exp" bottom: "data" top: "r" exp_param { base: 2 scale: 0.5 shift: 0.1 } }',
    "log": 'layer { name: "a" type: "AbsVal" bottom: "data" top: "a" }\nlayer { name: "r" type: "Log" bottom: "a" top: "r" }',
    "swish": 'layer { name: "r" type: "Swish" bottom: "data" top: "r" }',
    "mvn": 'layer { name: "r" type: "MVN" bottom: "data" top: "r" }',
    "mvn_mean_only": 'layer { name: "r" type: "MVN" bottom: "data" top: "r" mvn_param { normalize_variance: false } }',
    "mvn_across_channels": 'layer { name: "r" type: "MVN" bottom: "data" top: "r" mvn_param { across_channels: true } }',
    "convolution_depthwise": 'layer { name: "r" type: "ConvolutionDepthwise" bottom: "data" top: "r" '
                             'convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }',
    "depthwise_convolution": 'layer { name: "r" type: "DepthwiseConvolution" bottom: "data" top: "r" '
                             'convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 } }',
    "pooling_mask_top": 'layer { name: "r" type: "Pooling" bottom: "data" top: "r" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }',
}


@needs_opencv
@pytest.mark.parametrize("case", sorted(OPENCV_CASES))
def test_layer_matches_opencv(tmp_path, case):
    proto, model, graph, batch = build_small(tmp_path, _net(OPENCV_CASES[case]), [S])
    targets, outs = torch_layer_outputs(graph, batch)
    last = graph.state.parsed.layers[-1].layer.name
    cv_proto = _opencv_deploy(tmp_path, graph, {"data": S})
    cv = opencv_run(cv_proto, model, {"data": batch[0].numpy()}, [last] + list(targets))
    assert_close(outs[0], cv[0], what=case)
    for name, got in zip(targets, cv[1:]):
        assert_close(targets[name], got, what=f"{case} target {name}")


def test_depthwise_blob_is_convolutions_and_it_is_a_target(tmp_path):
    body = OPENCV_CASES["convolution_depthwise"]
    proto, model, graph, _ = build_small(tmp_path, _net(body), [S])
    assert [(t.name, t.op) for t in graph.targets] == [("r", "ConvolutionDepthwise")]
    from lsuv_convert.formats.caffe.schema import caffe_pb

    (layer,) = caffe_pb.NetParameter.FromString(model.read_bytes()).layer
    assert layer.type == "ConvolutionDepthwise"
    assert [list(b.shape.dim) for b in layer.blobs] == [[4, 1, 3, 3], [4]]
    bad = write_text(tmp_path, "bad.prototxt", _net(body.replace("num_output: 4", "num_output: 4 group: 2")))
    with pytest.raises(ModelFormatError, match="group = channels"):
        caffe_format().prepare(caffe_format().load(bad), [torch.zeros(S)])


# -- numpy references from the layers' Caffe sources, each checked by hand first ----------------------

def ref_threshold(x, t):
    return (x > t).astype(np.float64)


def ref_clip(x, lo, hi):
    return np.minimum(np.maximum(x, lo), hi)


def ref_log(x, base, scale, shift):
    y = np.log(shift + scale * x)
    return y if base == -1 else y / math.log(base)


def ref_swish(x, beta):
    return x / (1 + np.exp(-beta * x))


def ref_mvn(x, across, normalize, eps):
    axes = tuple(range(1 if across else 2, x.ndim))
    y = x - x.mean(axis=axes, keepdims=True)
    return y / (np.sqrt((y ** 2).mean(axis=axes, keepdims=True)) + eps) if normalize else y


def ref_tile(x, axis, tiles):
    # Caffe's Tile copies the whole block of axes axis.. ``tiles`` times, one after the other
    outer = int(np.prod(x.shape[:axis]))
    block = x.reshape(outer, -1)
    return np.concatenate([block] * tiles, axis=1).reshape(*x.shape[:axis], x.shape[axis] * tiles, *x.shape[axis + 1:])


def ref_reduction(x, axis, op, coeff):
    flat = x.reshape(*x.shape[:axis], -1)
    out = {"SUM": flat.sum(-1), "ASUM": np.abs(flat).sum(-1), "SUMSQ": (flat ** 2).sum(-1), "MEAN": flat.mean(-1)}[op]
    return out * coeff


def ref_argmax_flat(x, k, out_max_val):
    n = x.shape[0]
    out = np.zeros((n, 2 if out_max_val else 1, k, 1))
    for i in range(n):
        pairs = sorted(((v, j) for j, v in enumerate(x[i].reshape(-1))), reverse=True)[:k]  # Caffe's std::greater on pairs
        for j, (v, idx) in enumerate(pairs):
            out[i, 0, j, 0] = idx
            if out_max_val:
                out[i, 1, j, 0] = v
    return out


def ref_argmax_axis(x, k, axis, out_max_val):
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros((*moved.shape[:-1], k))
    for idx in np.ndindex(*moved.shape[:-1]):
        pairs = sorted(((v, j) for j, v in enumerate(moved[idx])), reverse=True)[:k]
        out[idx] = [v if out_max_val else j for v, j in pairs]
    return np.moveaxis(out, -1, axis)


def ref_pool(x, kernel, stride, pad, method):
    """Caffe's PoolingLayer (ceil rounding, windows clipped to the input; AVE divides by the window
    clipped to input + pad)."""
    n, c, h, w = x.shape
    oh = int(math.ceil((h + 2 * pad[0] - kernel[0]) / stride[0])) + 1
    ow = int(math.ceil((w + 2 * pad[1] - kernel[1]) / stride[1])) + 1
    if pad[0] and (oh - 1) * stride[0] >= h + pad[0]:
        oh -= 1
    if pad[1] and (ow - 1) * stride[1] >= w + pad[1]:
        ow -= 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            out[:, :, i, j] = window.max(axis=(2, 3)) if method == "MAX" else window.sum(axis=(2, 3)) / size
    return out


def ref_spp(x, height, method):
    parts = []
    for level in range(height):
        bins = 2 ** level
        kernel = [math.ceil(s / bins) for s in x.shape[2:]]
        pad = [(k * bins - s + 1) // 2 for k, s in zip(kernel, x.shape[2:])]
        parts.append(ref_pool(x, kernel, kernel, pad, method).reshape(x.shape[0], -1))
    return np.concatenate(parts, axis=1)


def ref_im2col(x, k, pad, stride):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((n, c * k * k, oh, ow))
    for ch in range(c):
        for ki in range(k):
            for kj in range(k):
                out[:, (ch * k + ki) * k + kj] = xp[:, ch, ki:ki + stride * oh:stride, kj:kj + stride * ow:stride]
    return out


def ref_bn(x, scale, shift, inference, eps=1e-9):
    if not inference:
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        x = (x - mean) / np.sqrt(var + eps)
    return x * scale + shift


def ref_unpool(x, mask, oh, ow):
    n, c = x.shape[:2]
    out = np.zeros((n, c, oh * ow))
    for i in range(n):
        for j in range(c):
            for v, m in zip(x[i, j].reshape(-1), mask[i, j].reshape(-1)):
                out[i, j, int(m)] = v
    return out.reshape(n, c, oh, ow)


def ref_upsample_nearest(x, sh, sw):
    return x.repeat(sh, axis=2).repeat(sw, axis=3)


def ref_axpy(a, x, y):
    return a.reshape(a.shape[0], a.shape[1], 1, 1) * x + y


def ref_interp(x, oh, ow):
    """caffe_cpu_interp2: source position i * (H-1)/(oh-1), bilinear."""
    n, c, h, w = x.shape
    rh = (h - 1) / (oh - 1) if oh > 1 else 0.0
    rw = (w - 1) / (ow - 1) if ow > 1 else 0.0
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        h1r = rh * i
        h1 = int(h1r)
        h1p = 1 if h1 < h - 1 else 0
        l1 = h1r - h1
        for j in range(ow):
            w1r = rw * j
            w1 = int(w1r)
            w1p = 1 if w1 < w - 1 else 0
            l2 = w1r - w1
            out[:, :, i, j] = ((1 - l1) * ((1 - l2) * x[:, :, h1, w1] + l2 * x[:, :, h1, w1 + w1p])
                               + l1 * ((1 - l2) * x[:, :, h1 + h1p, w1] + l2 * x[:, :, h1 + h1p, w1 + w1p]))
    return out


def test_references_on_hand_computed_values():
    x = np.array([[[[1.0, -2.0], [3.0, 0.5]]]])  # (1, 1, 2, 2)
    assert ref_threshold(x, 0.5).reshape(-1).tolist() == [1, 0, 1, 0]
    assert ref_clip(x, -1, 2).reshape(-1).tolist() == [1, -1, 2, 0.5]
    assert ref_log(np.array([4.0]), 2, 2, 0)[0] == pytest.approx(3.0)  # log2(2 * 4)
    assert ref_swish(np.array([0.0, 2.0]), 0.5).tolist() == pytest.approx([0.0, 2 / (1 + math.exp(-1))])
    assert ref_mvn(x, False, True, 0).reshape(-1) == pytest.approx(np.array([0.375, -2.625, 2.375, -0.125]) / math.sqrt(3.171875))
    assert ref_tile(np.arange(4.0).reshape(1, 2, 2), 1, 2).reshape(-1).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert ref_reduction(x, 1, "ASUM", 0.5).tolist() == [3.25]
    assert ref_reduction(x, 2, "SUMSQ", 1).reshape(-1).tolist() == [14.25]
    assert ref_reduction(x, 3, "SUMSQ", 1).reshape(-1).tolist() == [5.0, 9.25]
    assert ref_argmax_flat(x, 2, True).reshape(-1).tolist() == [2, 0, 3, 1]  # indices, then values
    assert ref_argmax_axis(np.array([[1.0, 5.0, 5.0]]), 2, 1, False).tolist() == [[2, 1]]  # a tie: larger index first
    y = np.arange(16.0).reshape(1, 1, 4, 4)
    assert ref_pool(y, (3, 3), (2, 2), (1, 1), "MAX").reshape(-1).tolist() == [5, 7, 7, 13, 15, 15, 13, 15, 15]
    assert ref_pool(y, (3, 3), (2, 2), (1, 1), "AVE")[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)
    assert ref_spp(y, 2, "MAX").reshape(-1).tolist() == [15, 5, 7, 13, 15]
    assert ref_im2col(np.arange(4.0).reshape(1, 1, 2, 2), 2, 0, 1).reshape(-1).tolist() == [0, 1, 2, 3]
    assert ref_bn(x, 2.0, 1.0, True).reshape(-1).tolist() == [3, -3, 7, 2]
    assert ref_unpool(np.array([[[[7.0]]]]), np.array([[[[3.0]]]]), 2, 2).reshape(-1).tolist() == [0, 0, 0, 7]
    assert ref_interp(np.array([[[[0.0, 3.0]]]]), 1, 4).reshape(-1).tolist() == pytest.approx([0, 1, 2, 3])
    assert ref_axpy(np.array([[2.0]]), x, x).reshape(-1).tolist() == [3, -6, 9, 1.5]


def _graph(tmp_path, text, arrays, name="net.prototxt"):
    """Load, prepare for ``arrays`` (as given), write: (graph, written caffemodel, net output)."""
    fmt = caffe_format()
    proto = write_text(tmp_path, name, text)
    batch = [torch.as_tensor(a, dtype=torch.float32) for a in arrays]
    graph = fmt.prepare(fmt.load(proto), batch)
    model = tmp_path / "net.caffemodel"
    fmt.save(graph, model)
    with torch.no_grad():
        out = graph.module(*batch)
    outs = list(out) if isinstance(out, tuple) else [out]
    return graph, model, [o.numpy().astype(np.float64) for o in outs]


def _x(shape=S, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


NUMPY_CASES = {
    "threshold": ('layer { name: "r" type: "Threshold" bottom: "data" top: "r" threshold_param { threshold: 0.3 } }',
                  lambda x: ref_threshold(x, 0.3)),
    "clip": ('layer { name: "r" type: "Clip" bottom: "data" top: "r" clip_param { min: -0.5 max: 0.7 } }',
             lambda x: ref_clip(x, -0.5, 0.7)),
    "log_base_scale_shift": ('layer { name: "a" type: "AbsVal" bottom: "data" top: "a" }\n'
                             'layer { name: "r" type: "Log" bottom: "a" top: "r" log_param { base: 3 scale: 2 shift: 0.5 } }',
                             lambda x: ref_log(np.abs(x), 3, 2, 0.5)),
    "swish_beta": ('layer { name: "r" type: "Swish" bottom: "data" top: "r" swish_param { beta: 1.5 } }',
                   lambda x: ref_swish(x, 1.5)),
    "mvn_eps": ('layer { name: "r" type: "MVN" bottom: "data" top: "r" mvn_param { across_channels: true eps: 0.01 } }',
                lambda x: ref_mvn(x, True, True, 0.01)),
    "tile": ('layer { name: "r" type: "Tile" bottom: "data" top: "r" tile_param { axis: 2 tiles: 3 } }',
             lambda x: ref_tile(x, 2, 3)),
    "tile_axis1": ('layer { name: "r" type: "Tile" bottom: "data" top: "r" tile_param { tiles: 2 } }',
                   lambda x: ref_tile(x, 1, 2)),
    "reduction_sumsq": ('layer { name: "r" type: "Reduction" bottom: "data" top: "r" '
                        'reduction_param { axis: 1 operation: SUMSQ coeff: 0.5 } }', lambda x: ref_reduction(x, 1, "SUMSQ", 0.5)),
    "reduction_mean_axis2": ('layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { axis: 2 operation: MEAN } }',
                             lambda x: ref_reduction(x, 2, "MEAN", 1)),
    "reduction_asum": ('layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { axis: -1 operation: ASUM } }',
                       lambda x: ref_reduction(x, 3, "ASUM", 1)),
    "argmax_flat_values": ('layer { name: "r" type: "ArgMax" bottom: "data" top: "r" argmax_param { top_k: 3 out_max_val: true } }',
                           lambda x: ref_argmax_flat(x, 3, True)),
    "argmax_axis": ('layer { name: "r" type: "ArgMax" bottom: "data" top: "r" argmax_param { axis: 1 top_k: 2 } }',
                    lambda x: ref_argmax_axis(x, 2, 1, False)),
    "spp_max": ('layer { name: "r" type: "SPP" bottom: "data" top: "r" spp_param { pyramid_height: 3 } }',
                lambda x: ref_spp(x, 3, "MAX")),
    "spp_ave": ('layer { name: "r" type: "SPP" bottom: "data" top: "r" spp_param { pyramid_height: 2 pool: AVE } }',
                lambda x: ref_spp(x, 2, "AVE")),
    "permute_partial_order": ('layer { name: "r" type: "Permute" bottom: "data" top: "r" permute_param { order: 0 order: 3 } }',
                              lambda x: x.transpose(0, 3, 1, 2)),  # SSD: the axes not named follow in order
    "im2col": ('layer { name: "r" type: "Im2col" bottom: "data" top: "r" convolution_param { kernel_size: 3 pad: 1 stride: 2 } }',
               lambda x: ref_im2col(x, 3, 1, 2)),
    "upsample_nearest_scale": ('layer { name: "r" type: "Upsample" bottom: "data" top: "r" upsample_param { scale: 2 } }',
                               lambda x: ref_upsample_nearest(x, 2, 2)),
    "interp_shrink_then_zoom_with_crop": ('layer { name: "r" type: "Interp" bottom: "data" top: "r" '
                                          'interp_param { shrink_factor: 2 zoom_factor: 3 pad_beg: -1 pad_end: 0 } }',
                                          lambda x: ref_interp(x[:, :, 1:, 1:], 7, 7)),
}


@pytest.mark.parametrize("case", sorted(NUMPY_CASES))
def test_layer_matches_its_reference(tmp_path, case):
    body, reference = NUMPY_CASES[case]
    x = _x()
    _, _, outs = _graph(tmp_path, _net(body), [x])
    assert_close(outs[0], reference(x.astype(np.float64)), what=case)


def test_segnet_upsample_puts_values_where_the_pooling_mask_says(tmp_path):
    """SegNet: 7x7 -> pool 2/2 (ceil) -> 4x4 + mask -> Upsample back to 7x7, by size or by scale - pad_out."""
    body = ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { upsample_h: 7 upsample_w: 7 } }\n'
            'layer { name: "u2" type: "Upsample" bottom: "p" bottom: "m" top: "u2" '
            'upsample_param { scale: 2 pad_out_h: true pad_out_w: true } }')
    x = _x((2, 3, 7, 7))
    graph, model, (u, u2) = _graph(tmp_path, _net(body, (2, 3, 7, 7)), [x])
    xd = x.astype(np.float64)
    pooled = ref_pool(xd, (2, 2), (2, 2), (0, 0), "MAX")
    mask = np.zeros_like(pooled)  # Caffe's mask: h * W + w of the first maximum in the (clipped) window
    for i in range(4):
        for j in range(4):
            window = xd[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            width = window.shape[3]
            arg = window.reshape(2, 3, -1).argmax(-1)
            mask[:, :, i, j] = (2 * i + arg // width) * 7 + (2 * j + arg % width)
    want = ref_unpool(pooled, mask, 7, 7)
    assert_close(u, want, what="upsample_h/w")
    assert_close(u2, want, what="scale with pad_out")


@pytest.mark.parametrize("mode, inference", [("INFERENCE", True), ("LEARN", False)])
def test_segnet_bn_blobs_and_modes(tmp_path, mode, inference):
    body = (f'layer {{ name: "bn" type: "BN" bottom: "data" top: "bn" bn_param {{ bn_mode: {mode} '
            'scale_filler { type: "constant" value: 1.5 } shift_filler { type: "constant" value: 0.25 } } }')
    x = _x()
    graph, model, (out,) = _graph(tmp_path, _net(body), [x])
    assert_close(out, ref_bn(x.astype(np.float64), 1.5, 0.25, inference), what=mode)
    from lsuv_convert.formats.caffe.schema import caffe_pb

    (layer,) = caffe_pb.NetParameter.FromString(model.read_bytes()).layer
    assert [list(b.shape.dim) for b in layer.blobs] == [[1, 4, 1, 1], [1, 4, 1, 1]]
    assert list(layer.blobs[0].data) == [1.5] * 4 and list(layer.blobs[1].data) == [0.25] * 4


def test_bn_of_other_forks_spelling(tmp_path):
    body = ('layer { name: "bn" type: "BN" bottom: "data" top: "bn" '
            'bn_param { slope_filler { type: "constant" value: 2 } bias_filler { type: "constant" value: -1 } eps: 0.001 } }')
    x = _x()
    _, _, (out,) = _graph(tmp_path, _net(body), [x])
    assert_close(out, ref_bn(x.astype(np.float64), 2.0, -1.0, False, eps=0.001))


def test_axpy_scales_channels_and_adds(tmp_path):
    body = ('layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: AVE global_pooling: true } }\n'
            'layer { name: "t" type: "TanH" bottom: "data" top: "t" }\n'
            'layer { name: "r" type: "Axpy" bottom: "g" bottom: "data" bottom: "t" top: "r" }')
    x = _x().astype(np.float64)
    _, _, (out,) = _graph(tmp_path, _net(body), [x])
    assert_close(out, ref_axpy(x.mean(axis=(2, 3)), x, np.tanh(x)))


def test_embed_batch_reindex_and_filter(tmp_path):
    text = ('name: "t"\n' + input_layer("ids", (3, 2)) + input_layer("x", (3, 5)) + input_layer("order", (4,))
            + input_layer("keep", (3,)) +
            'layer { name: "e" type: "Embed" bottom: "ids" top: "e" embed_param { num_output: 4 input_dim: 6 '
            'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } } }\n'
            'layer { name: "b" type: "BatchReindex" bottom: "x" bottom: "order" top: "b" }\n'
            'layer { name: "f" type: "Filter" bottom: "x" bottom: "e" bottom: "keep" top: "fx" top: "fe" }\n')
    ids = np.array([[0, 5], [2, 2], [1, 3]], dtype=np.float32)
    x = _x((3, 5))
    order = np.array([2, 0, 2, 1], dtype=np.float32)
    keep = np.array([1, 0, 1], dtype=np.float32)
    graph, model, (b, fx, fe) = _graph(tmp_path, text, [ids, x, order, keep])
    table = graph.module.e.table.detach().numpy().astype(np.float64)
    embedded = table[ids.astype(int)] + 0.5
    assert_close(b, x[[2, 0, 2, 1]].astype(np.float64), what="BatchReindex")
    assert_close(fx, x[[0, 2]].astype(np.float64), what="Filter x")
    assert_close(fe, embedded[[0, 2]], what="Filter embed")
    from lsuv_convert.formats.caffe.schema import caffe_pb

    (layer,) = caffe_pb.NetParameter.FromString(model.read_bytes()).layer
    assert layer.name == "e" and [list(b.shape.dim) for b in layer.blobs] == [[6, 4], [4]]


def test_parameter_layer_is_a_learned_blob(tmp_path):
    body = ('layer { name: "q" type: "Parameter" top: "q" parameter_param { shape { dim: 4 } } '
            'blobs { shape { dim: 4 } data: 1 data: 2 data: 3 data: 4 } }\n'
            'layer { name: "r" type: "Scale" bottom: "data" bottom: "q" top: "r" }')
    x = _x()
    _, model, (out,) = _graph(tmp_path, _net(body), [x])
    assert_close(out, x * np.array([1.0, 2, 3, 4]).reshape(1, 4, 1, 1))
    from lsuv_convert.formats.caffe.schema import caffe_pb

    (layer,) = caffe_pb.NetParameter.FromString(model.read_bytes()).layer
    assert layer.name == "q" and list(layer.blobs[0].data) == [1, 2, 3, 4]


@pytest.mark.parametrize("body, fragment", [
    ('layer { name: "r" type: "Clip" bottom: "data" top: "r" clip_param { min: 1 } }', "both clip_param min and max"),
    ('layer { name: "r" type: "Permute" bottom: "data" top: "r" permute_param { order: 1 order: 0 } }', "batch axis"),
    ('layer { name: "r" type: "ShuffleChannel" bottom: "data" top: "r" shuffle_channel_param { group: 3 } }', "group 3 must divide"),
    ('layer { name: "r" type: "Interp" bottom: "data" top: "r" }', "needs height and width"),
    ('layer { name: "r" type: "Interp" bottom: "data" top: "r" interp_param { pad_beg: 1 } }', "pad_end <= 0"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
     'layer { name: "r" type: "Crop" bottom: "p" bottom: "data" top: "r" }', "exceed the input"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" pooling_param { pool: AVE kernel_size: 2 } }',
     "two for MAX pooling"),
    ('layer { name: "r" type: "Axpy" bottom: "data" bottom: "data" bottom: "data" top: "r" }', "(N, C, 1, 1)"),
    ('layer { name: "r" type: "Tile" bottom: "data" top: "r" tile_param { tiles: 0 } }', "tiles must be positive"),
    ('layer { name: "r" type: "PriorBox" bottom: "data" bottom: "data" top: "r" }\n'
     'layer { name: "c" type: "Convolution" bottom: "r" top: "c" convolution_param { num_output: 1 kernel_size: 1 } }',
     "a PriorBox layer can only come after the last Convolution"),
])
def test_bad_new_layers_are_named_errors(tmp_path, body, fragment):
    path = write_text(tmp_path, "bad.prototxt", _net(body))
    with pytest.raises(ModelFormatError) as err:
        fmt = caffe_format()
        fmt.prepare(fmt.load(path), [torch.zeros(S)])
    assert fragment in str(err.value) and str(err.value).startswith(str(path))
    assert "(line " in str(err.value)


def test_fork_field_numbers():
    """The fork parameters carry their fork's field numbers (where BVLC's own numbers don't clash)."""
    from lsuv_convert.formats.caffe.schema import caffe_pb

    fields = caffe_pb.LayerParameter.DESCRIPTOR.fields_by_name
    numbers = {name: fields[name].number for name in
               ("permute_param", "prior_box_param", "detection_output_param", "norm_param", "shuffle_channel_param",
                "bn_param", "crop_param", "clip_param", "swish_param", "embed_param", "tile_param", "argmax_param")}
    assert numbers == {"permute_param": 202, "prior_box_param": 203, "detection_output_param": 204, "norm_param": 206,
                       "shuffle_channel_param": 164, "bn_param": 45, "crop_param": 144, "clip_param": 148,
                       "swish_param": 147, "embed_param": 137, "tile_param": 138, "argmax_param": 103}
    norm = caffe_pb.NormalizeParameter.DESCRIPTOR.fields_by_name
    assert [norm[n].number for n in ("across_spatial", "scale_filler", "channel_shared", "eps")] == [1, 2, 3, 4]
    bn = caffe_pb.BNParameter.DESCRIPTOR.fields_by_name
    assert [bn[n].number for n in ("scale_filler", "shift_filler", "bn_mode")] == [1, 2, 3]
    interp = caffe_pb.InterpParameter.DESCRIPTOR.fields_by_name
    assert [interp[n].number for n in ("height", "width", "zoom_factor", "shrink_factor", "pad_beg", "pad_end")] == [1, 2, 3, 4, 5, 6]
    up = caffe_pb.UpsampleParameter.DESCRIPTOR.fields_by_name
    assert [up[n].number for n in ("scale", "pad_out_h", "upsample_h", "upsample_w")] == [1, 4, 6, 7]


# -- LSTM / RNN -------------------------------------------------------------------------------------

def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def ref_lstm(x, cont, w_xc, b_c, w_hc, static=None, w_static=None):
    """BVLC lstm_layer + lstm_unit_layer: gates i, f, o, g in that order."""
    steps, streams = x.shape[:2]
    hidden = w_hc.shape[1]
    h, c = np.zeros((streams, hidden)), np.zeros((streams, hidden))
    out = []
    for t in range(steps):
        gates = x[t].reshape(streams, -1) @ w_xc.T + b_c + (cont[t][:, None] * h) @ w_hc.T
        if static is not None:
            gates = gates + static.reshape(streams, -1) @ w_static.T
        i, f, o, g = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
        c = cont[t][:, None] * _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out)


def ref_rnn(x, cont, w_xh, b_h, w_hh, w_ho, b_o):
    steps, streams = x.shape[:2]
    h = np.zeros((streams, w_hh.shape[0]))
    out = []
    for t in range(steps):
        h = np.tanh(x[t].reshape(streams, -1) @ w_xh.T + b_h + (cont[t][:, None] * h) @ w_hh.T)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out)


def test_recurrent_references_by_hand():
    # one stream, one unit, all weights 1, biases 0: i = f = o = sigmoid(x + h), g = tanh(x + h)
    x, cont = np.array([[[1.0]], [[0.5]]]), np.array([[0.0], [1.0]])
    ones = np.ones((4, 1))
    h = ref_lstm(x, cont, ones, np.zeros(4), ones)
    c1 = _sigmoid(1) * np.tanh(1)
    h1 = _sigmoid(1) * np.tanh(c1)
    c2 = _sigmoid(0.5 + h1) * c1 + _sigmoid(0.5 + h1) * np.tanh(0.5 + h1)
    assert h.reshape(-1) == pytest.approx([h1, _sigmoid(0.5 + h1) * np.tanh(c2)])
    o = ref_rnn(x, np.array([[1.0], [0.0]]), np.ones((1, 1)), np.zeros(1), np.ones((1, 1)), np.ones((1, 1)), np.zeros(1))
    assert o.reshape(-1) == pytest.approx([np.tanh(np.tanh(1)), np.tanh(np.tanh(0.5))])  # cont 0 drops the state


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_recurrent_layers_match_their_reference_and_write_caffes_blobs(tmp_path, kind):
    text = ('name: "t"\n' + input_layer("x", (5, 2, 3)) + input_layer("cont", (5, 2))
            + f'layer {{ name: "r" type: "{kind}" bottom: "x" bottom: "cont" top: "h" recurrent_param {{ num_output: 4 '
              'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "constant" value: 0.1 } } }\n')
    x = _x((5, 2, 3))
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    graph, model, (out,) = _graph(tmp_path, text, [x, cont])
    blobs = {name: getattr(graph.module.r, name).detach().numpy().astype(np.float64) for name in graph.module.r.names}
    xd, cd = x.astype(np.float64), cont.astype(np.float64)
    if kind == "LSTM":
        assert list(blobs) == ["W_xc", "b_c", "W_hc"]
        want = ref_lstm(xd, cd, blobs["W_xc"], blobs["b_c"], blobs["W_hc"])
    else:
        assert list(blobs) == ["W_xh", "b_h", "W_hh", "W_ho", "b_o"]
        want = ref_rnn(xd, cd, *blobs.values())
    assert_close(out, want, what=kind)
    assert graph.targets == [] and any("not LSUV targets" in n for n in graph.notes)
    from lsuv_convert.formats.caffe.schema import caffe_pb

    (layer,) = caffe_pb.NetParameter.FromString(model.read_bytes()).layer
    expected = [[16, 3], [16], [16, 4]] if kind == "LSTM" else [[4, 3], [4], [4, 4], [4, 4], [4]]
    assert [list(b.shape.dim) for b in layer.blobs] == expected


def test_lstm_with_a_static_input_feeds_lsuv_targets_after_it(tmp_path):
    text = ('name: "t"\n' + input_layer("x", (4, 3, 2)) + input_layer("cont", (4, 3)) + input_layer("s", (3, 5))
            + 'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" bottom: "s" top: "h" recurrent_param { num_output: 2 '
              'weight_filler { type: "gaussian" std: 0.5 } } }\n'
            + 'layer { name: "fc" type: "InnerProduct" bottom: "h" top: "fc" inner_product_param { num_output: 3 axis: 2 } }\n')
    x, s = _x((4, 3, 2)), _x((3, 5), seed=1)
    cont = np.ones((4, 3), dtype=np.float32)
    graph, _, (out,) = _graph(tmp_path, text, [x, cont, s])
    assert [t.name for t in graph.targets] == ["fc"]
    r = graph.module.r
    want = ref_lstm(x.astype(np.float64), cont.astype(np.float64), *(getattr(r, n).detach().numpy().astype(np.float64)
                                                                      for n in ("W_xc", "b_c", "W_hc")),
                    static=s.astype(np.float64), w_static=r.W_xc_static.detach().numpy().astype(np.float64))
    fc = graph.module.fc
    assert_close(out, want @ fc.weight.detach().numpy().T + fc.bias.detach().numpy())
