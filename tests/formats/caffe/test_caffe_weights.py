"""The .caffemodel: what we write (layout, defaults, atomicity) and what ``--weights`` reads
(by layer name, legacy 4-D and V1 files, shape checks, keep-and-rescale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_helpers import (needs_opencv, built_graph, shared_model, assert_close, build_small, caffe_format, input_layer, opencv_run,
                           seeded_batch, write_text)
from lsuv_convert import lsuv_init
from lsuv_convert.errors import ConversionError, ModelFormatError
from lsuv_convert.formats.caffe.schema import caffe_pb

SHAPE = (4, 3, 8, 8)
NET = 'name: "small"\n' + input_layer("data", SHAPE) + """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 group: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "shared" type: "PReLU" bottom: "pool1" top: "pool1" prelu_param { channel_shared: true } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 3 bias_term: false transpose: true } }
"""

EXPECTED_BLOBS = {
    "conv1": [(6, 1, 3, 3), (6,)],
    "bn1": [(6,), (6,), (1,)],
    "sc1": [(6,), (6,)],
    "relu1": [(6,)],
    "shared": [None],  # legacy 1x1x1x1 for Caffe's 0-d blob
    "ip1": [(5, 6 * 3 * 3), (5,)],
    "ip2": [(5, 3)],
}


def _blob_shape(blob):
    return tuple(blob.shape.dim) if blob.HasField("shape") else None


def _written(path):
    net = caffe_pb.NetParameter.FromString(path.read_bytes())
    return {layer.name: layer for layer in net.layer}


def _array(blob, shape=None):
    values = np.array(blob.data, dtype=np.float32)
    return values.reshape(shape if shape is not None else _blob_shape(blob) or values.shape)


def _convert(tmp_path, proto, *, weights=None, pre_init="orthonormal", out_name="out.caffemodel", shape=SHAPE):
    fmt = caffe_format()
    graph = fmt.load(proto, weights=weights)
    x = torch.from_numpy(seeded_batch(shape))
    graph = fmt.prepare(graph, [x])
    report = lsuv_init(graph.module, (x,), targets=[t.module_path for t in graph.targets], pre_init=pre_init,
                       seed=0, device="cpu")
    out = tmp_path / out_name
    fmt.save(graph, out)
    return graph, report, out, x


@needs_opencv
def test_written_file_lists_every_layer_with_blobs_in_caffes_layout(tmp_path):
    proto = write_text(tmp_path, "small.prototxt", NET)
    graph, report, out, x = _convert(tmp_path, proto)
    layers = _written(out)
    assert list(layers) == list(EXPECTED_BLOBS)  # net order, parameter-free layers absent
    for name, shapes in EXPECTED_BLOBS.items():
        blobs = layers[name].blobs
        assert [_blob_shape(b) for b in blobs] == shapes, name
        assert all(np.isfinite(b.data).all() for b in blobs)
    shared = layers["shared"].blobs[0]
    assert (shared.num, shared.channels, shared.height, shared.width) == (1, 1, 1, 1) and len(shared.data) == 1
    assert layers["conv1"].type == "Convolution" and list(layers["conv1"].bottom) == ["data"]
    # defaults of the non-target blobs: identity BatchNorm and Scale, PReLU 0.25
    bn = [_array(b) for b in layers["bn1"].blobs]
    assert (bn[0] == 0).all() and (bn[1] == 1).all() and bn[2].tolist() == [1.0]
    assert (_array(layers["sc1"].blobs[0]) == 1).all() and (_array(layers["sc1"].blobs[1]) == 0).all()
    assert (_array(layers["relu1"].blobs[0]) == 0.25).all()
    # OpenCV reads the file with the same prototxt and sees unit variance at every target
    outs = opencv_run(proto, out, {"data": x.numpy()}, ["conv1", "ip1", "ip2"])
    for name, value in zip(["conv1", "ip1"], outs):
        assert abs(value.var() - 1) < 0.02, name
    # ip2 (transpose: true) is stored (K, N); OpenCV ignores transpose, so check it with numpy
    w2 = _array(layers["ip2"].blobs[0])
    assert abs(float((outs[1].reshape(4, -1) @ w2).var()) - 1) < 0.02


@needs_opencv
def test_weights_are_loaded_by_layer_name_and_keep_only_rescales(tmp_path):
    proto = write_text(tmp_path, "small.prototxt", NET)
    _, given_path, _, _ = build_small(tmp_path, NET, [SHAPE], name="given.prototxt")
    given = _written(given_path)
    graph, report, out, x = _convert(tmp_path, proto, weights=given_path, pre_init="keep")
    assert any("loaded blobs of 7 layer(s)" in n for n in graph.notes)
    written = _written(out)
    for name in ("conv1", "ip1", "ip2"):
        w_given, w_out = _array(given[name].blobs[0]), _array(written[name].blobs[0])
        ratio = w_out / w_given
        assert np.allclose(ratio, ratio.flat[0], rtol=1e-5), name  # one scale factor per layer
        entry = next(r for r in report.layers if r.name == name)
        assert ratio.flat[0] == pytest.approx(entry.scale, rel=1e-5)
    for name in ("conv1", "ip1"):  # keep leaves biases alone
        assert np.array_equal(_array(given[name].blobs[1]), _array(written[name].blobs[1]))
    for name in ("bn1", "sc1", "relu1", "shared"):  # non-targets keep their given blobs exactly
        assert [list(b.data) for b in given[name].blobs] == [list(b.data) for b in written[name].blobs]
    outs = opencv_run(proto, out, {"data": x.numpy()}, ["conv1", "ip1"])
    assert all(abs(o.var() - 1) < 0.02 for o in outs)


def test_orthonormal_pre_init_with_weights_keeps_the_non_target_blobs(tmp_path):
    proto = write_text(tmp_path, "small.prototxt", NET)
    _, given_path, _, _ = build_small(tmp_path, NET, [SHAPE], name="given.prototxt")
    graph, report, out, x = _convert(tmp_path, proto, weights=given_path)
    given, written = _written(given_path), _written(out)
    assert [list(b.data) for b in given["bn1"].blobs] == [list(b.data) for b in written["bn1"].blobs]
    assert not np.allclose(_array(given["conv1"].blobs[0]), _array(written["conv1"].blobs[0]))
    assert (_array(written["conv1"].blobs[1]) == 0).all()  # pre-init zeroes target biases


def _legacy_blob(values: np.ndarray, dims4, double=False):
    blob = caffe_pb.BlobProto(num=dims4[0], channels=dims4[1], height=dims4[2], width=dims4[3])
    if double:
        blob.double_data.extend(values.astype(np.float64).ravel().tolist())
    else:
        blob.data.extend(values.astype(np.float32).ravel().tolist())
    return blob


LEGACY_NET = 'name: "legacy"\n' + input_layer("data", (2, 3, 6, 6)) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 2 } }
"""


def _legacy_values():
    rng = np.random.default_rng(1)
    return {"conv": [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)],
            "fc": [rng.standard_normal((2, 64)), rng.standard_normal(2)]}


@pytest.mark.parametrize("v1", [False, True])
def test_old_caffemodels_with_4d_blobs_and_v1_layers(tmp_path, v1):
    values = _legacy_values()
    dims = {"conv": [(4, 3, 3, 3), (1, 1, 1, 4)], "fc": [(1, 1, 2, 64), (1, 1, 1, 2)]}
    net = caffe_pb.NetParameter(name="legacy")
    for name, v1_type in (("conv", 4), ("fc", 14)):
        layer = net.layers.add(name=name, type=v1_type) if v1 else net.layer.add(name=name)
        for i, (array, d) in enumerate(zip(values[name], dims[name])):
            layer.blobs.append(_legacy_blob(array, d, double=(i == 1)))
    weights = tmp_path / "legacy.caffemodel"
    weights.write_bytes(net.SerializeToString())
    graph = built_graph(write_text(tmp_path, "legacy.prototxt", LEGACY_NET), weights=weights)
    assert np.allclose(graph.module.conv.weight.detach().numpy(), values["conv"][0], atol=1e-6)
    assert np.allclose(graph.module.conv.bias.detach().numpy(), values["conv"][1], atol=1e-6)
    assert np.allclose(graph.module.fc.weight.detach().numpy(), values["fc"][0], atol=1e-6)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda net: net.layer[0].blobs.pop(), "has 1 blob(s) for it, the net needs 2 (weight (4, 3, 3, 3), bias (4,))"),
    (lambda net: net.layer[0].blobs[0].shape.dim.__setitem__(0, 5),
     "its weight blob in w.caffemodel has shape (5, 3, 3, 3), the net expects (4, 3, 3, 3)"),
    (lambda net: net.layer[1].blobs[0].data.pop(), "its weight blob in w.caffemodel holds 127 values for shape (2, 64)"),
])
def test_weight_mismatches_are_named(tmp_path, mutate, fragment):
    values = _legacy_values()
    net = caffe_pb.NetParameter()
    for name in ("conv", "fc"):
        layer = net.layer.add(name=name)
        for array in values[name]:
            layer.blobs.add(shape=caffe_pb.BlobShape(dim=array.shape), data=array.ravel().tolist())
    mutate(net)
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(net.SerializeToString())
    proto = write_text(tmp_path, "legacy.prototxt", LEGACY_NET)
    with pytest.raises(ModelFormatError) as err:
        built_graph(proto, weights=weights)
    assert fragment in str(err.value) and str(err.value).startswith(str(proto))


def test_not_a_caffemodel(tmp_path):
    proto = write_text(tmp_path, "legacy.prototxt", LEGACY_NET)
    with pytest.raises(ModelFormatError, match="not a binary .caffemodel"):
        caffe_format().load(proto, weights=proto)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="no layer with blobs"):
        caffe_format().load(proto, weights=empty)
    with pytest.raises(ModelFormatError, match="cannot read weights"):
        caffe_format().load(proto, weights=tmp_path / "missing.caffemodel")


def test_blobs_of_layers_outside_the_test_net_pass_through(tmp_path):
    text = LEGACY_NET + ('layer { name: "aux" type: "Convolution" bottom: "conv" top: "aux" include { phase: TRAIN } '
                         'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    net = caffe_pb.NetParameter()
    aux = net.layer.add(name="aux", type="Convolution")
    aux.blobs.add(shape=caffe_pb.BlobShape(dim=[2, 4, 1, 1]), data=[float(i) for i in range(8)])
    aux.blobs.add(shape=caffe_pb.BlobShape(dim=[2]), data=[0.5, -0.5])
    net.layer.add(name="ghost", type="ReLU").blobs.add(data=[1.0])
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(net.SerializeToString())
    proto = write_text(tmp_path, "n.prototxt", text)
    graph, report, out, x = _convert(tmp_path, proto, weights=weights, shape=(2, 3, 6, 6))
    written = _written(out)
    assert list(written) == ["conv", "fc", "aux"]
    assert list(written["aux"].blobs[0].data) == [float(i) for i in range(8)]
    assert any("ghost" in n and "not in the net" in n for n in graph.notes)
    assert any("2 layer(s) with parameters are not in the weights file" in n for n in graph.notes)


def test_non_finite_values_are_never_written(tmp_path):
    proto = write_text(tmp_path, "small.prototxt", NET)
    fmt = caffe_format()
    graph = fmt.load(proto)
    graph = fmt.prepare(graph, [torch.from_numpy(seeded_batch(SHAPE))])
    with torch.no_grad():
        graph.module.bn1.mean[0] = float("nan")
    out = tmp_path / "out.caffemodel"
    with pytest.raises(ConversionError, match="bn1"):
        fmt.save(graph, out)
    assert not out.exists() and not list(tmp_path.glob(".out.caffemodel*"))


def test_save_is_atomic_over_an_existing_file(tmp_path, monkeypatch):
    proto = write_text(tmp_path, "small.prototxt", NET)
    fmt = caffe_format()
    graph = fmt.load(proto)
    graph = fmt.prepare(graph, [torch.from_numpy(seeded_batch(SHAPE))])
    out = tmp_path / "out.caffemodel"
    out.write_bytes(b"previous")
    import lsuv_convert.formats.caffe.write as write

    encoded = write.caffemodel_chunks

    def interrupted_midway(*args):
        return encoded(*args)[:3] + ["not bytes: writing fails here"]

    monkeypatch.setattr(write, "caffemodel_chunks", interrupted_midway)
    with pytest.raises(TypeError):
        fmt.save(graph, out)
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["out.caffemodel", "small.prototxt"]


@needs_opencv
def test_written_weights_reload_into_the_same_graph(tmp_path):
    """Write -> --weights -> the torch graph reproduces OpenCV on the written file (real model)."""
    proto = shared_model("cifar10_quick.prototxt")
    graph, report, out, x = _convert(tmp_path, proto, shape=(8, 3, 32, 32))
    reloaded = caffe_format().load(proto, weights=out)
    reloaded = caffe_format().prepare(reloaded, [x])
    for name, module in graph.module.named_modules():
        if hasattr(module, "weight") and isinstance(module.weight, torch.Tensor):
            assert torch.equal(module.weight, reloaded.module.get_submodule(name).weight), name
    with torch.no_grad():
        ours = reloaded.module(x).numpy()  # the last target's output: the Softmax after it never runs
    assert_close(ours, opencv_run(proto, out, {"data": x.numpy()}, [reloaded.targets[-1].name])[0])


def test_blobs_written_in_the_prototxt_are_initial_values(tmp_path):
    text = 'name: "inline"\n' + input_layer("data", (2, 2, 3, 3)) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 1 kernel_size: 1 }
        blobs { shape { dim: 1 dim: 2 dim: 1 dim: 1 } data: 0.5 data: -2 } blobs { shape { dim: 1 } data: 3 } }
"""
    graph = built_graph(write_text(tmp_path, "inline.prototxt", text))
    assert graph.module.conv.weight.flatten().tolist() == [0.5, -2.0] and graph.module.conv.bias.tolist() == [3.0]
    bad = text.replace("dim: 2 dim: 1 dim: 1 } data: 0.5 data: -2", "dim: 1 dim: 1 dim: 2 } data: 0.5 data: -2")
    with pytest.raises(ModelFormatError, match=r"its weight blob in the prototxt has shape \(1, 1, 1, 2\)"):
        built_graph(write_text(tmp_path, "bad.prototxt", bad))
