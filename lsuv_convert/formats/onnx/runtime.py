"""onnxruntime as the independent judge: run a ModelProto and read any intermediate tensor.

Used by the fidelity gate (torch graph vs onnxruntime), by save's check of the written
weights and by ``measure`` (per-layer statistics of a written file for ``verify``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from ...errors import ConversionError, DataError, first_line


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that aren't initializers (IR < 4 lists weights as inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def input_names(model: onnx.ModelProto) -> list[str]:
    return [i.name for i in graph_inputs(model)]


def feeds_for(model: onnx.ModelProto, inputs: list) -> dict[str, np.ndarray]:
    """Arrays for the model's inputs, in declaration order, cast to the declared element types."""
    specs = graph_inputs(model)
    if len(specs) != len(inputs):
        raise DataError(f"model has {len(specs)} input(s) but {len(inputs)} array(s) were given")
    feeds = {}
    for spec, value in zip(specs, inputs):
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        elem = spec.type.tensor_type.elem_type
        if elem:
            array = array.astype(onnx.helper.tensor_dtype_to_np_dtype(elem), copy=False)
        feeds[spec.name] = np.ascontiguousarray(array)
    return feeds


def run(model: onnx.ModelProto, inputs: list, tensors: list[str]) -> dict[str, np.ndarray]:
    """Values of ``tensors`` (any intermediate names) and of the graph outputs, by name."""
    import onnxruntime as ort

    feeds = feeds_for(model, inputs)
    existing = {o.name for o in model.graph.output}
    added = [n for n in dict.fromkeys(tensors) if n not in existing]
    model.graph.output.extend([onnx.ValueInfoProto(name=n) for n in added])
    tmp = None
    try:
        try:
            source = model.SerializeToString()
        except ValueError:  # over protobuf's 2 GiB: go through a file with external data
            tmp = tempfile.TemporaryDirectory(prefix="lsuv-onnx-")
            source = _save_external(model, Path(tmp.name))
    finally:
        if added:
            del model.graph.output[len(model.graph.output) - len(added):]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        del source
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ConversionError(f"onnxruntime can't run the model: {first_line(exc)}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    return dict(zip(names, values))


def _save_external(model: onnx.ModelProto, folder: Path) -> str:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    path = folder / "model.onnx"
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
    return str(path)


