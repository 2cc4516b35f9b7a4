"""The output ModelProto: the source model with only the target layers' initializers replaced.

Nodes, names, opsets, metadata, doc strings and value_info are copied as they are; a target
whose tensor had to be untied (see :mod:`.targets`) gets a new initializer appended and
only that target's weight/bias input is repointed to it. Every tensor keeps the element type
the source stored it in (float16 stays float16).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import ConversionError


def build_output(model: onnx.ModelProto, plan, paths: dict[str, str], module, external: set[str]):
    """(output ModelProto, names of its initializers to store externally)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    position = {t.name: k for k, t in enumerate(graph.initializer)}
    graph_inputs = {i.name: i for i in graph.input}
    out_external = set(external)
    written: set[str] = set()
    for target in plan.targets:
        layer = module.get_submodule(paths[target.label])
        for slot in target.slots():
            if slot.new:
                graph.node[slot.node_index].input[slot.input_index] = slot.dest
            if slot.dest in written:
                continue
            written.add(slot.dest)
            source = model.graph.initializer[position[slot.initializer]]
            array = _array_for(target, slot, layer, source)
            tensor = numpy_helper.from_array(array, slot.dest)
            tensor.doc_string = source.doc_string
            if slot.new:
                graph.initializer.append(tensor)
                if slot.initializer in graph_inputs:  # IR < 4 lists initializers as graph inputs too
                    entry = graph.input.add()
                    entry.CopyFrom(graph_inputs[slot.initializer])
                    entry.name = slot.dest
                if slot.initializer in external:
                    out_external.add(slot.dest)
            else:
                graph.initializer[position[slot.dest]].CopyFrom(tensor)
    return out, out_external


def _array_for(target, slot, layer, source: onnx.TensorProto) -> np.ndarray:
    value = getattr(layer, slot.kind).detach().cpu()
    if slot.kind == "bias" and target.op == "Gemm" and target.attrs.get("beta", 1.0) != 1.0:
        value = value.double() / target.attrs["beta"]  # the module holds beta * C
    dtype = onnx.helper.tensor_dtype_to_np_dtype(source.data_type)
    array = value.numpy().astype(dtype).reshape(tuple(source.dims))
    if not np.isfinite(array).all():
        raise ConversionError(f"layer {target.label!r}: its new {slot.kind} is not finite in {dtype}; nothing written")
    return np.ascontiguousarray(array)



def constant_sources(model: onnx.ModelProto, plan, paths: dict[str, str], module, source_path=None) -> dict[str, float]:
    """Round trip of every target tensor through the writer's mapping; {initializer: value} of
    the source tensors that are constant (all elements equal), which such a round trip can't test.

    Called before LSUV, on the converted module with the file's own weights: writing those
    weights back must give the file's arrays again. The gate proved that onnx2torch's reading
    of the initializers means in torch what it means in onnxruntime; this proves that save's
    mapping (transposes, Gemm's beta, reshapes, dtypes) is the exact inverse of that reading,
    so the written file computes what LSUV measured without running it again. A round trip
    through a constant tensor (the zero biases of an untrained export) proves nothing about
    transposes or scales: save re-checks a layer whose such tensor it writes as anything else.
    A round trip that fails is a bug: ConversionError, nothing written.
    """
    source = {t.name: t for t in model.graph.initializer}
    constant: dict[str, float] = {}
    for target in plan.targets:
        layer = module.get_submodule(paths[target.label])
        for slot in target.slots():
            original = numpy_helper.to_array(source[slot.initializer])
            if not np.issubdtype(original.dtype, np.floating) or original.size == 0:
                constant[slot.dest] = float("nan")  # nothing to compare: always re-checked
                continue
            written = _array_for(target, slot, layer, source[slot.initializer])
            scale = float(np.abs(original).max())
            if written.shape != original.shape or float(np.abs(written.astype(np.float64) - original).max()) > 1e-6 * scale:
                raise ConversionError(f"layer {target.label!r}: writing its {slot.kind} back does not reproduce the "
                                      "file's values (a bug in lsuv-convert); nothing written", path=source_path)
            if original.min() == original.max():
                constant[slot.dest] = float(original.flat[0])
    return constant


def same_constant(tensor: onnx.TensorProto, value: float) -> bool:
    """Whether a written tensor is all ``value`` or all zeros: then no mapping error can hide in it."""
    array = numpy_helper.to_array(tensor)
    if array.size == 0 or value != value:
        return False
    return bool((array == value).all() or not array.any())
