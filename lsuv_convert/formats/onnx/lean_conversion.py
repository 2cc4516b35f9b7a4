"""What onnx2torch repeats at conversion time, done without touching the weights twice.

``onnx.shape_inference.infer_shapes`` serializes the whole model, weights included, and parses
the result back: on a 100 MB resnet50 that is 0.3 s and a second copy of the weights in memory,
and the conversion needed it three times (our fixes, the convertibility probe, onnx2torch).
Shapes depend on the weights' dims, never on the values of large float tensors, so inference
runs on a copy whose large float initializers carry dims only, and the inferred ``value_info``
is written into the model itself. Integer tensors and small float tensors keep their values:
shape computations (Reshape targets, Resize scales, Slice bounds) read them.

The same goes for the random initialization of the nn.Conv / nn.Linear modules onnx2torch's
converters build (0.14 s per 25 M weights, twice: the convertibility probe and the conversion):
the converters overwrite every such parameter with the file's tensor right after.
"""

from __future__ import annotations

from contextlib import contextmanager

import onnx
from onnx import TensorProto

from .files import copy_fields
from .targets import FLOAT_TYPES

KEEP_VALUES_UP_TO = 4096  # elements: a float tensor this small may feed a shape computation


def _needs_values(tensor: TensorProto) -> bool:
    if tensor.data_type not in FLOAT_TYPES:
        return True
    count = 1
    for d in tensor.dims:
        count *= d
    return count <= KEEP_VALUES_UP_TO


def _without_large_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large float initializers hold dims and type, no data."""
    light = onnx.ModelProto()
    copy_fields(model, light, skip=("graph",))
    graph = light.graph
    copy_fields(model.graph, graph, skip=("initializer",))
    for tensor in model.graph.initializer:
        if _needs_values(tensor):
            graph.initializer.add().CopyFrom(tensor)
        else:
            shell = graph.initializer.add()
            shell.name, shell.data_type = tensor.name, tensor.data_type
            shell.dims.extend(tensor.dims)
    return light


def infer_shapes_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the inferred value_info and output types that ``infer_shapes`` would give it
    (raises what ``infer_shapes`` raises). Returns ``model`` itself."""
    inferred = onnx.shape_inference.infer_shapes(_without_large_values(model))
    graph = model.graph
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    for output, typed in zip(graph.output, inferred.graph.output):
        if output.name == typed.name and output.type != typed.type:
            output.type.CopyFrom(typed.type)
    return model


@contextmanager
def onnx2torch_infers_without_weights():
    """While converting, onnx2torch's own shape inference step (``safe_shape_inference``, which
    round-trips the weights through protobuf) uses :func:`infer_shapes_in_place` on the model it is
    given, which is our private working copy. onnx2torch is not changed; if a later version no
    longer has that helper, its own inference runs."""
    import onnx2torch.converter as converter

    original = getattr(converter, "safe_shape_inference", None)
    if original is None:
        yield
        return

    def light(model_or_path, **kwargs):
        if isinstance(model_or_path, onnx.ModelProto) and not kwargs:
            return infer_shapes_in_place(model_or_path)
        return original(model_or_path, **kwargs)

    converter.safe_shape_inference = light
    try:
        yield
    finally:
        converter.safe_shape_inference = original


@contextmanager
def modules_without_random_init():
    """While onnx2torch's converters build modules, ``reset_parameters`` draws no random numbers:
    the converters assign every parameter they create from the file (``weight.data = ...``), and
    the fidelity gate compares the whole converted graph with onnxruntime anyway. The same
    scoped switch as transformers' ``no_init_weights``; restored on exit."""
    import torch.nn.init as init

    names = ("kaiming_uniform_", "uniform_", "normal_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_")
    saved = {name: getattr(init, name) for name in names if hasattr(init, name)}

    def keep(tensor, *args, **kwargs):
        return tensor

    for name in saved:
        setattr(init, name, keep)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)
