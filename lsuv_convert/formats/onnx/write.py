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

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import ConversionError, first_few
from ...lsuv.statistics import all_finite
from .files import NewTensor, copy_fields
from .targets import effective_value, graph_view, stored_layout, unique_name


@dataclass
class Output:
    """The output model: ``model`` holds every field of the source but the initializers (nodes
    repointed where a tensor was untied); ``initializers`` are the source's own TensorProtos
    (shared, not copied) with :class:`files.NewTensor` for every tensor written anew."""

    model: onnx.ModelProto
    initializers: list
    external: set[str]  # initializers to store in the external data file
    notes: list[str]

    def materialized(self) -> onnx.ModelProto:
        """The whole ModelProto (a copy of every weight): for the onnxruntime check and tests."""
        whole = onnx.ModelProto()
        whole.CopyFrom(self.model)
        whole.graph.initializer.extend(t.proto() if isinstance(t, NewTensor) else t for t in self.initializers)
        return whole


def build_output(model: onnx.ModelProto, plan, paths: dict[str, str], module, external: set[str]) -> Output:
    """The output for ``model`` with the target layers' values from ``module``, and notes about untying."""
    out = onnx.ModelProto()
    copy_fields(model, out, skip=("graph",))
    copy_fields(model.graph, out.graph, skip=("initializer",))
    graph = out.graph
    initializers = list(model.graph.initializer)
    g = graph_view(model)
    position = {t.name: k for k, t in enumerate(initializers)}
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
            _write_stored(graph, initializers, position, g, source, keep)
        new_names: dict[bytes, str] = {}
        for (target, slot, value), array in zip(entries, arrays):
            if _same(array, keep):
                continue
            key = value.tobytes() + str(value.dtype).encode()
            if key not in new_names:
                name = unique_name(f"{target.label}.{slot.kind}", taken)
                taken.add(name)
                initializers.append(NewTensor(name, value, stored.doc_string))
                if out.ir_version < 4 or source in graph_inputs:  # IR < 4 lists initializers as graph inputs too
                    data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
                    graph.input.append(onnx.helper.make_tensor_value_info(name, data_type, list(value.shape)))
                if source in external:
                    out_external.add(name)
                new_names[key] = name
                untied.append(f"{target.label}.{slot.kind}")
            graph.node[slot.node_index].input[slot.input_index] = new_names[key]
    notes = []
    if untied:
        shown = first_few(untied, 8)
        notes.append(
            f"untied {len(untied)} weight/bias tensor(s) that other nodes also read (exporter de-duplication) "
            f"because the values written for them differ: each got its own initializer ({shown})"
        )
    return Output(out, initializers, out_external, notes)


def read_differently(output: Output, plan, paths: dict[str, str], module) -> list[str]:
    """Target tensors (``label.weight``/``label.bias``) that their node in ``out`` does not read as
    exactly, bit for bit, the value torch holds in ``output``; empty when every one does. (The caller also
    checks that nothing but these parameters changed in torch since the gate.)

    The fidelity gate showed that the torch graph computes what onnxruntime computes with the
    file's weights; the targets are the only weight-dependent parts and their torch modules use
    the parameters LSUV scaled. So when every target node of the written graph reads exactly
    those parameters, through whatever Identity/Transpose/Reshape chain and untying the writer
    left, onnxruntime computes on the written file what LSUV measured, without running it. A
    lossy chain (float16 storage behind a Cast) reads something else: those need a run."""
    g = graph_view(output.model, {t.name: (t.array if isinstance(t, NewTensor) else t) for t in output.initializers})
    off = []
    for target in plan.targets:
        layer = module.get_submodule(paths[target.label])
        for slot in target.slots():
            resolved = g.resolve(output.model.graph.node[slot.node_index].input[slot.input_index])
            read = effective_value(g.stored(resolved[0]), resolved[1]) if resolved is not None else None
            if read is None or not _same(read, _seen_value(target, slot, layer, check=False)):  # checked when built
                off.append(f"{target.label}.{slot.kind}")
    return off


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaN payloads and signed zeros included): arrays over the same memory without
    reading it, others compared as machine words in slices that stop at the first difference."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    if a.ctypes.data == b.ctypes.data:
        return True
    a, b = a.view(np.uint8), b.view(np.uint8)
    width = next(w for w in (8, 4, 2, 1) if a.size % w == 0)
    a, b = a.view(f"<u{width}"), b.view(f"<u{width}")
    step = 1 << 20
    return all(np.array_equal(a[k:k + step], b[k:k + step]) for k in range(0, a.size, step))


def _write_stored(graph, initializers: list, position: dict, g, source: str, array: np.ndarray) -> None:
    if source in g.constants:
        node = graph.node[g.constants[source]]
        attr = next(a for a in node.attribute if a.name == "value")
        name, doc = attr.t.name, attr.t.doc_string
        attr.t.CopyFrom(numpy_helper.from_array(array, name))
        attr.t.doc_string = doc
        return
    initializers[position[source]] = NewTensor(source, array, g.stored(source).doc_string)


def _seen_value(target, slot, layer, check: bool = True) -> np.ndarray:
    """The slot's new value as the layer's node sees it (shape and element type after the chain);
    with ``check``, refused unless finite in that element type."""
    value = getattr(layer, slot.kind).detach().cpu()
    if slot.kind == "bias" and target.op == "Gemm" and target.attrs.get("beta", 1.0) != 1.0:
        value = value.double() / target.attrs["beta"]  # the module holds beta * C
    dtype = onnx.helper.tensor_dtype_to_np_dtype(slot.elem_type)
    array = value.numpy().astype(dtype, copy=False).reshape(slot.dims)  # a view of the parameter where it can be
    if check and not all_finite(array):
        raise ConversionError(f"layer {target.label!r}: its new {slot.kind} is not finite in {dtype}; nothing written")
    return np.ascontiguousarray(array)
