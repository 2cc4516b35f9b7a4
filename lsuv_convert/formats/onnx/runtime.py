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


ORT_MIN_OPSET = 7  # onnxruntime has no kernels for the standard ops of opsets 1-6


def runnable(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The model as onnxruntime (and the torch conversion) should see it, and a note if it differs.

    Files of opset < 7 (PyTorch 0.3 / Caffe2 era: Gemm-6 with ``broadcast``, BatchNormalization-6
    and Dropout-6 with ``is_test``) are lifted to opset 7 with onnx's version converter, when that
    keeps every node in place (same count and outputs), so values map back one to one. The file
    written is always the source, with its own opset and nodes."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= ORT_MIN_OPSET or opset == 0:
        return model, None
    try:
        from onnx import version_converter

        lifted = version_converter.convert_version(model, ORT_MIN_OPSET)
    except Exception:  # noqa: BLE001 - the converter can't lift it: onnxruntime will say what it can't run
        return model, None
    same = len(lifted.graph.node) == len(model.graph.node) and all(
        list(a.output) == list(b.output) for a, b in zip(lifted.graph.node, model.graph.node))
    if not same:
        return model, None
    return lifted, (f"opset {opset} lifted to opset {ORT_MIN_OPSET} with onnx's version converter for onnxruntime "
                    f"and the torch conversion (onnxruntime runs opset {ORT_MIN_OPSET}+); the written file keeps opset {opset}")


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
    """Values of ``tensors`` (any intermediate names) by name; with no ``tensors``, the graph outputs.

    Only the nodes ``tensors`` depend on run: post-processing after them (NMS, TopK, decoding)
    is neither run nor allowed to fail on a batch it was not made for."""
    import onnxruntime as ort

    feeds = feeds_for(model, inputs)
    if tensors:
        model = _only_what_leads_to(model, set(tensors))
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
    ort.set_default_logger_severity(3)  # onnxruntime's own C++ warnings never reach stderr beside our line
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # a run's activations are freed when it ends, not kept reserved
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        del source
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ConversionError(f"onnxruntime can't run the model: {_name_the_node(model, first_line(exc))}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    return dict(zip(names, values))


def _only_what_leads_to(model: onnx.ModelProto, wanted: set[str]) -> onnx.ModelProto:
    """A model computing ``wanted`` (as outputs) with only the nodes they depend on."""
    from .regions import node_reads

    needed, kept = set(wanted), []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(node_reads(node))
    if len(kept) == len(model.graph.node):  # nothing to prune: the caller adds the outputs in place
        return model
    out = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(out, field, getattr(model, field))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    graph = out.graph
    graph.name = model.graph.name
    graph.input.extend(model.graph.input)
    listed = {i.name for i in model.graph.input}  # IR < 4 lists initializers as inputs: keep those
    graph.initializer.extend(t for t in model.graph.initializer if t.name in needed or t.name in listed)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    graph.node.extend(reversed(kept))
    graph.value_info.extend(model.graph.value_info)
    by_name = {o.name: o for o in model.graph.output}
    graph.output.extend(by_name[n] if n in by_name else onnx.ValueInfoProto(name=n) for n in wanted)
    return out


def _save_external(model: onnx.ModelProto, folder: Path) -> str:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    path = folder / "model.onnx"
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
    return str(path)


def _name_the_node(model: onnx.ModelProto, message: str) -> str:
    """onnxruntime names ops (``Gemm(6)``, ``com.example:Frob(-1)``) but often not the node: add it."""
    import re

    match = re.search(r"(?:([\w.]+):)?(\w+)\((-?\d+)\)", message)
    if match is None:
        return message
    domain, op = match.group(1) or "", match.group(2)
    for node in model.graph.node:
        if node.op_type == op and (not domain or node.domain == domain):
            label = node.name or (node.output[0] if node.output else op)
            opset = {o.domain: o.version for o in model.opset_import}.get(node.domain if node.domain != "ai.onnx" else "", "?")
            where = f"{node.domain}:" if node.domain not in ("", "ai.onnx") else ""
            return f"node {label!r} ({where}{op}, opset {opset}): {message}"
    return message
