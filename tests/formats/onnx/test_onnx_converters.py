"""The onnx2torch converters lsuv-convert adds or replaces, each checked against onnxruntime.

Every case is one ONNX node in a model built with onnx.helper, converted the way the plug-in
converts (working copy + onnx2torch with our registered converters) and run by both torch and
onnxruntime on the same random input.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lsuv_convert.formats.onnx import convert as onnx_convert

RNG = np.random.default_rng(0)


def _model(node, inputs, consts=None, opset=18, n_outputs=1):
    """A one-node model; ``inputs`` are (name, array) fed at run time, ``consts`` initializers."""
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs],
        [onnx.ValueInfoProto(name=name) for name in node.output[:n_outputs]],
        [numpy_helper.from_array(a, n) for n, a in (consts or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, inputs, atol=1e-5):
    import onnx2torch
    import onnxruntime as ort

    feeds = dict(inputs)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    work = onnx_convert.working_copy(model)
    module = onnx2torch.convert(work).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(a) for _, a in inputs])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g = g.numpy()
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=atol)


X = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
POSITIVE = np.abs(X) + 0.5

REDUCE_OPS = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
              "ReduceLogSum", "ReduceLogSumExp"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes,keepdims", [([-2, -1], 0), ([1, 3], 1), ([0, -1], 0), ([], 1), ([], 0)])
def test_reduce_18_static_axes(op, axes, keepdims):
    data = POSITIVE if op == "ReduceLogSum" else X
    inputs = ["x"] + (["axes"] if axes else [])
    node = helper.make_node(op, inputs, ["y"], keepdims=keepdims)
    consts = {"axes": np.array(axes, np.int64)} if axes else {}
    _check(_model(node, [("x", data)], consts), [("x", data)], atol=1e-4)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceL2"])
def test_reduce_18_axes_as_input_and_noop(op):
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=0)
    axes = np.array([-1, 1], np.int64)
    _check(_model(node, [("x", X), ("axes", axes)]), [("x", X), ("axes", axes)])
    noop = helper.make_node(op, ["x"], ["y"], noop_with_empty_axes=1)
    _check(_model(noop, [("x", X)]), [("x", X)])


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceProd", "ReduceMean", "ReduceSum"])
def test_reduce_13_negative_axes_fixed(op):
    """onnx2torch's own converter sorts negative axes and reduces the wrong dim with keepdims=0."""
    node = helper.make_node(op, ["x"], ["y"], axes=[-2, -1], keepdims=0)
    _check(_model(node, [("x", X)], opset=12 if op == "ReduceSum" else 13), [("x", X)], atol=1e-4)


PAD_CASES = {  # X is (2, 3, 5, 4); reflect can pad at most size - 1; only constant mode crops (< 0)
    "all-axes": ([1, 2, 0, 1, 1, 2, 1, 0], None, ("constant", "reflect", "edge", "wrap")),
    "some-axes": ([2, 1, 1, 2], [-1, 2], ("constant", "reflect", "edge", "wrap")),
    "crop": ([0, 0, 1, -1, 0, 0, -1, 2], None, ("constant",)),
}


@pytest.mark.parametrize("case,mode", [(c, m) for c in sorted(PAD_CASES) for m in PAD_CASES[c][2]])
def test_pad_18(case, mode):
    pads, axes, _ = PAD_CASES[case]
    inputs = ["x", "pads", "value" if mode == "constant" else ""] + (["axes"] if axes else [])
    consts = {"pads": np.array(pads, np.int64)}
    if mode == "constant":
        consts["value"] = np.array(0.75, np.float32)
    if axes:
        consts["axes"] = np.array(axes, np.int64)
    node = helper.make_node("Pad", inputs, ["y"], mode=mode)
    _check(_model(node, [("x", X)], consts, opset=19), [("x", X)])


def test_pad_18_pads_as_input():
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    _check(_model(node, [("x", X), ("pads", pads)]), [("x", X), ("pads", pads)])


@pytest.mark.parametrize("length,num_outputs,axis", [(10, 3, 1), (9, 3, -1), (7, 2, 0)])
def test_split_18_num_outputs(length, num_outputs, axis):
    shape = [2, 3, 4]
    shape[axis] = length
    x = RNG.standard_normal(shape).astype(np.float32)
    outputs = [f"y{i}" for i in range(num_outputs)]
    node = helper.make_node("Split", ["x"], outputs, axis=axis, num_outputs=num_outputs)
    _check(_model(node, [("x", x)], n_outputs=num_outputs), [("x", x)])


def test_split_18_sizes():
    x = RNG.standard_normal((2, 9)).astype(np.float32)
    node = helper.make_node("Split", ["x", "split"], ["a", "b", "c"], axis=1)
    _check(_model(node, [("x", x)], {"split": np.array([2, 3, 4], np.int64)}, n_outputs=3), [("x", x)])


IMAGE = RNG.standard_normal((1, 2, 5, 7)).astype(np.float32)
RESIZE_CASES = [
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"),
    dict(mode="nearest", coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil"),
    dict(mode="nearest", coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="ceil"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="align_corners"),
    dict(mode="linear", coordinate_transformation_mode="asymmetric"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
    dict(mode="cubic", coordinate_transformation_mode="half_pixel"),
    dict(mode="cubic", coordinate_transformation_mode="align_corners", cubic_coeff_a=-0.5),
    dict(mode="cubic", coordinate_transformation_mode="half_pixel", exclude_outside=1),
]


@pytest.mark.parametrize("attrs", RESIZE_CASES, ids=lambda a: "-".join(str(v) for v in a.values()))
@pytest.mark.parametrize("how", ["scales-up", "scales-down", "sizes"])
def test_resize_18_19(attrs, how):
    consts = {}
    if how == "sizes":
        inputs = ["x", "", "", "sizes"]
        consts["sizes"] = np.array([1, 2, 8, 4], np.int64)
    else:
        inputs = ["x", "", "scales"]
        consts["scales"] = np.array([1, 1, 1.6, 2.5] if how == "scales-up" else [1, 1, 0.6, 0.5], np.float32)
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    _check(_model(node, [("x", IMAGE)], consts, opset=19), [("x", IMAGE)], atol=1e-4)


def test_resize_18_axes_and_keep_aspect_ratio():
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", axes=[2, 3],
                            keep_aspect_ratio_policy="not_larger")
    _check(_model(node, [("x", IMAGE)], {"sizes": np.array([9, 9], np.int64)}), [("x", IMAGE)], atol=1e-4)


@pytest.mark.parametrize("in_shape,shape,opset", [((0, 3, 4), [0, 6, 2], 18), ((2, 0, 4), [4, 0], 18),
                                                  ((2, 3, 4), [6, -1], 19), ((3, 0), [0, 3], 21)])
def test_reshape_allowzero(in_shape, shape, opset):
    x = RNG.standard_normal(in_shape).astype(np.float32)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1)
    _check(_model(node, [("x", x)], {"shape": np.array(shape, np.int64)}, opset=opset), [("x", x)])


def test_reshape_19_copies_zero_dims_without_allowzero():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    _check(_model(node, [("x", x)], {"shape": np.array([0, -1], np.int64)}, opset=19), [("x", x)])


def test_type_widened_versions_at_opset_21():
    """Cast/Identity/Shape/Squeeze/Unsqueeze/Transpose/Flatten kept their semantics in 19-21."""
    x = RNG.standard_normal((2, 1, 3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Squeeze", ["a", "ax1"], ["b"]),
        helper.make_node("Transpose", ["b"], ["c"], perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["c", "ax1"], ["d"]),
        helper.make_node("Flatten", ["d"], ["e"], axis=2),
        helper.make_node("Cast", ["e"], ["f"], to=TensorProto.DOUBLE),
        helper.make_node("Shape", ["f"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f"], ["g"], keepdims=0),
        helper.make_node("Cast", ["g"], ["h"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["h", "sf"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [onnx.ValueInfoProto(name="y")],
                              [numpy_helper.from_array(np.array([1], np.int64), "ax1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    _check(model, [("x", x)], atol=1e-4)


def test_onnx2torch_registry_is_extended_not_forked():
    from onnx2torch.node_converters import get_converter

    from lsuv_convert.formats.onnx import converters as onnx_converters

    for op, version in [("ReduceMean", 18), ("Pad", 18), ("Split", 18), ("Resize", 18), ("Reshape", 19)]:
        assert get_converter(operation_type=op, version=version).__module__ == onnx_converters.__name__
    # onnx2torch keeps its own converters for the versions it has
    assert get_converter(operation_type="Conv", version=13).__module__.startswith("onnx2torch.")


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("size", [9, 10])
def test_conv_auto_pad_made_explicit(mode, size):
    """onnx2torch refuses auto_pad; the working copy spells the pads out (ONNX's formula)."""
    x = RNG.standard_normal((2, 3, size, size + 1)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=mode, strides=[2, 3])  # onnxruntime: no dilation
    _check(_model(node, [("x", x)], {"w": w}, opset=13), [("x", x)], atol=1e-4)
