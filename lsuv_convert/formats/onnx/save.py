"""The output ModelProto: the source model with only the target layers' stored weight values changed.

Nodes, names, opsets, metadata, doc strings and value_info are copied as they are. Each stored
tensor (initializer or ``Constant`` node value) that target layers read is written in its own
layout and element type (the chain of Identity / Transpose / Cast / Reshape nodes between it and
the layer is undone; float16 stays float16).

Untying is decided by value: a stored tensor several layers resolve to (exporters de-duplicate
equal tensors, e.g. all the zero biases of an untrained model) stays one tensor, written in
place, when every layer's new value is the same and no other node still needs the old one;
only a layer whose written value differs gets a new initializer, and only that layer's input is
repointed to it. Without ``--center`` zero biases stay zero, so they stay tied.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import ConversionError
from .targets import graph_view, stored_layout, unique_name


def build_output(model: onnx.ModelProto, plan, paths: dict[str, str], module, external: set[str]):
    """(output ModelProto, names of its initializers to store externally, notes about untying)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    g = graph_view(model)
    position = {t.name: k for k, t in enumerate(graph.initializer)}
    graph_inputs = {i.name: i for i in graph.input}
    taken = set(g.initializers) | set(g.producer) | set(graph_inputs)
    out_external = set(external)

    by_source: dict[str, list] = {}
    for target in plan.targets:
        layer = module.get_submodule(paths[target.label])
        for slot in target.slots():
            by_source.setdefault(slot.source, []).append((target, slot, _seen_value(target, slot, layer)))

    untied: list[str] = []
    for source, entries in by_source.items():
        stored = g.stored(source)
        current = numpy_helper.to_array(stored)
        users, exposed = g.users(source)
        others = exposed or bool(users - {(s.node_index, s.input_index) for _, s, _ in entries})
        arrays = [stored_layout(value, slot.chain, stored) for _, slot, value in entries]
        keep = current if others else arrays[0]
        if not others and not _same(keep, current):
            _write_stored(graph, position, g, source, keep)
        new_names: dict[bytes, str] = {}
        for (target, slot, value), array in zip(entries, arrays):
            if _same(array, keep):
                continue
            key = value.tobytes() + str(value.dtype).encode()
            if key not in new_names:
                name = unique_name(f"{target.label}.{slot.kind}", taken)
                taken.add(name)
                tensor = numpy_helper.from_array(value, name)
                tensor.doc_string = stored.doc_string
                graph.initializer.append(tensor)
                if out.ir_version < 4 or source in graph_inputs:  # IR < 4 lists initializers as graph inputs too
                    graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
                if source in external:
                    out_external.add(name)
                new_names[key] = name
                untied.append(f"{target.label}.{slot.kind}")
            graph.node[slot.node_index].input[slot.input_index] = new_names[key]
    notes = []
    if untied:
        shown = ", ".join(untied[:8]) + (f" and {len(untied) - 8} more" if len(untied) > 8 else "")
        notes.append(
            f"untied {len(untied)} weight/bias tensor(s) that other nodes also read (exporter de-duplication) "
            f"because the values written for them differ: each got its own initializer ({shown})"
        )
    return out, out_external, notes


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _write_stored(graph, position: dict, g, source: str, array: np.ndarray) -> None:
    if source in g.constants:
        node = graph.node[g.constants[source]]
        attr = next(a for a in node.attribute if a.name == "value")
        name, doc = attr.t.name, attr.t.doc_string
        attr.t.CopyFrom(numpy_helper.from_array(array, name))
        attr.t.doc_string = doc
        return
    tensor = graph.initializer[position[source]]
    doc = tensor.doc_string
    tensor.CopyFrom(numpy_helper.from_array(array, source))
    tensor.doc_string = doc


def _seen_value(target, slot, layer) -> np.ndarray:
    """The slot's new value as the layer's node sees it (shape and element type after the chain)."""
    value = getattr(layer, slot.kind).detach().cpu()
    if slot.kind == "bias" and target.op == "Gemm" and target.attrs.get("beta", 1.0) != 1.0:
        value = value.double() / target.attrs["beta"]  # the module holds beta * C
    dtype = onnx.helper.tensor_dtype_to_np_dtype(slot.elem_type)
    array = value.numpy().astype(dtype).reshape(slot.dims)
    if not np.isfinite(array.astype(np.float64)).all():
        raise ConversionError(f"layer {target.label!r}: its new {slot.kind} is not finite in {dtype}; nothing written")
    return np.ascontiguousarray(array)
