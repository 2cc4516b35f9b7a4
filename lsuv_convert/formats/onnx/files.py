"""Reading and writing ONNX files: strict checks on the way in, atomic writes on the way out.

A bad file (missing, empty, truncated, corrupt, external data missing or short) becomes one
ModelFormatError line. Loading parses protobuf and reads external data files named by the
model, relative to its folder; nothing in the file is executed.

Weights kept in an external data file stay external on output: the tensors the source kept
outside are written to ``<output name>.data`` beside the output, the others stay inline.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

from ...atomic import atomic_path, atomic_paths
from ...errors import ModelFormatError, OutputError
from ..shared.protobuf_wire import field_head, varint

_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def read_model(path: Path) -> tuple[onnx.ModelProto, dict[str, Path]]:
    """The model with all weights in memory, and {initializer stored externally: its data file}."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError("file not found", path=path) from None
    except IsADirectoryError:
        raise ModelFormatError("is a folder, not an ONNX file", path=path) from None
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if not data:
        raise ModelFormatError("empty file, not an ONNX model", path=path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ModelFormatError("not a valid ONNX model: the protobuf can't be parsed (truncated or corrupt file?)", path=path) from None
    del data
    _check_header(model, path)
    external = {}
    for tensor in _all_initializers(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            external[tensor.name] = _load_external(tensor, path)
    _check_initializers(model, path)
    _check_references(model, path)
    return model, external


def _all_initializers(model: onnx.ModelProto):
    return list(model.graph.initializer)


def _check_header(model: onnx.ModelProto, path: Path) -> None:
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelFormatError("not an ONNX model (no IR version or no graph: truncated or corrupt file?)", path=path)
    if not model.opset_import:
        raise ModelFormatError("not a valid ONNX model: it declares no opset (truncated file?)", path=path)
    graph = model.graph
    if not graph.node:
        raise ModelFormatError("the ONNX graph has no nodes", path=path)
    if not graph.output:
        raise ModelFormatError("the ONNX graph declares no outputs (truncated file?)", path=path)


def _load_external(tensor: TensorProto, path: Path) -> Path:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if not location or PurePosixPath(location).is_absolute() or ".." in parts or os.path.isabs(location):
        raise ModelFormatError(f"initializer {tensor.name!r}: external data location {location!r} is not a file beside the model", path=path)
    data_file = path.parent / location
    if not data_file.is_file():
        raise ModelFormatError(f"external data file {location!r} (for initializer {tensor.name!r}) not found", path=path)
    try:
        load_external_data_for_tensor(tensor, str(path.parent))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for bad offsets/lengths
        raise ModelFormatError(f"initializer {tensor.name!r}: can't read its external data from {location!r}: {exc}", path=path) from None
    return data_file


def _expected_elements(tensor: TensorProto) -> int:
    return int(math.prod(tensor.dims)) if tensor.dims else 1


def _raw_length(tensor: TensorProto) -> int:
    """len(tensor.raw_data) without reading it (Python's protobuf hands out a copy of the bytes):
    the message's encoded size less its other fields' is 1 tag byte + the varint of the length + the length."""
    shell = TensorProto()
    copy_fields(tensor, shell, skip=("raw_data",))
    rest = tensor.ByteSize() - shell.ByteSize() - 1
    for width in range(1, 11):
        if len(varint(rest - width)) == width:
            return rest - width
    return len(tensor.raw_data)


def _check_initializers(model: onnx.ModelProto, path: Path) -> None:
    for tensor in model.graph.initializer:
        n = _expected_elements(tensor)
        if tensor.HasField("raw_data"):
            try:
                itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            except (KeyError, TypeError, ValueError):
                continue  # exotic element types (4-bit, float8): nothing to check here
            if tensor.data_type in (TensorProto.INT4, TensorProto.UINT4):
                continue
            held = _raw_length(tensor)
            if held != n * itemsize:
                raise ModelFormatError(
                    f"initializer {tensor.name!r} holds {held} bytes, its shape {list(tensor.dims)} needs {n * itemsize} (truncated file?)",
                    path=path,
                )
        else:
            count = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
            if count not in (n, 2 * n) and not (n == 0 and count == 0):
                raise ModelFormatError(
                    f"initializer {tensor.name!r} holds {count} values, its shape {list(tensor.dims)} needs {n} (truncated file?)",
                    path=path,
                )


def _check_references(model: onnx.ModelProto, path: Path) -> None:
    graph = model.graph
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced_later = {out for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            if name not in defined:
                label = node.name or node.op_type
                if name in produced_later:
                    raise ModelFormatError(f"node {label!r} reads {name!r} before it is computed: the graph is not topologically sorted", path=path)
                raise ModelFormatError(f"node {label!r} reads {name!r}, which nothing defines (truncated or corrupt file?)", path=path)
        defined.update(node.output)
    for out in graph.output:
        if out.name not in defined:
            raise ModelFormatError(f"graph output {out.name!r} is not computed by any node (truncated or corrupt file?)", path=path)


def data_file_for(out_path: Path, keep: set[Path] = frozenset()) -> Path:
    """``<out>.data``, or ``<out>.N.data`` if that is a data file the source model still reads
    (writing in place must not change the weights under the model being replaced)."""
    keep = {p.resolve() for p in keep}
    candidate, n = out_path.with_name(out_path.name + ".data"), 1
    while candidate.resolve() in keep:
        n += 1
        candidate = out_path.with_name(f"{out_path.name}.{n}.data")
    return candidate


@dataclass
class NewTensor:
    """An initializer to write from an array (the written value of a layer): encoded straight from
    the array's memory into the file, never as a TensorProto holding a copy."""

    name: str
    array: np.ndarray
    doc_string: str = ""

    def proto(self) -> TensorProto:
        tensor = numpy_helper.from_array(self.array, self.name)
        tensor.doc_string = self.doc_string
        return tensor


def write_model(model: onnx.ModelProto, out_path: Path, external: set[str], keep: set[Path] = frozenset(),
                initializers: list | None = None) -> None:
    """Write ``model`` atomically; initializers named in ``external`` go to one data file beside
    it (see :func:`data_file_for`; files in ``keep`` are never overwritten).

    ``initializers`` (TensorProto or :class:`NewTensor`; default: the model's own) replace the
    model's. They are encoded into the file one at a time, so neither a copy of the model nor its
    whole serialization is ever in memory (a protobuf message is the concatenation of its fields,
    in any order). ``model`` is not modified.
    """
    out_path = Path(out_path)
    data_path = data_file_for(out_path, keep)
    tensors = list(model.graph.initializer) if initializers is None else list(initializers)
    if not any(_name(t) in external for t in tensors):
        with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
            _stream(model, tensors, fh, out_path, None)
        return
    # the model and its data file are one unit: both are written in full before either replaces
    # the old pair, so a failure leaves the old model with the data it needs
    with atomic_paths([data_path, out_path]) as (tmp_data, tmp_model):
        with open(tmp_data, "wb") as data_fh, open(tmp_model, "wb") as fh:
            _stream(model, tensors, fh, out_path, (data_fh, data_path.name, external))


def _name(tensor) -> str:
    return tensor.name


_RAW_DATA_TAG = bytes([(9 << 3) | 2])  # TensorProto.raw_data, field 9, length-delimited
_FAST_DTYPES = (np.float32, np.float16, np.float64)


def _stream(model: onnx.ModelProto, tensors: list, fh, out_path: Path, external_to) -> None:
    """``model`` with ``tensors`` as its initializers, encoded into ``fh``: the model's other fields,
    then its graph (field 7) as the graph's other fields followed by one initializer field (5)
    per tensor. With ``external_to`` = (data file, its name, names), those tensors' bytes go to
    the data file and the model holds their location."""
    top = onnx.ModelProto()
    copy_fields(model, top, skip=("graph",))
    graph = onnx.GraphProto()
    copy_fields(model.graph, graph, skip=("initializer",))
    parts, offset = [], 0  # per tensor: (encoded bytes before the payload, payload or None, payload size)
    for tensor in tensors:
        if external_to is not None and tensor.name in external_to[2]:
            raw = memoryview(np.ascontiguousarray(tensor.array)).cast("B") if isinstance(tensor, NewTensor) else _raw_bytes(tensor)
            shell = _shell(tensor)
            _point_to_file(shell, external_to[1], offset, len(raw))
            offset += len(raw)
            head = _serialize(shell, out_path)
            parts.append((tensor, head, raw, 0))
        elif isinstance(tensor, NewTensor) and tensor.array.dtype.type in _FAST_DTYPES and tensor.array.dtype.isnative:
            array = np.ascontiguousarray(tensor.array)
            shell = _serialize(_shell(tensor), out_path) + _RAW_DATA_TAG + varint(array.nbytes)
            parts.append((tensor, shell, memoryview(array).cast("B"), array.nbytes))
        else:
            proto = tensor.proto() if isinstance(tensor, NewTensor) else tensor
            parts.append((proto, None, None, proto.ByteSize()))
    graph_head = _serialize(graph, out_path)
    fields = []
    for _tensor, head, _payload, size in parts:
        inner = size + (len(head) if head is not None else 0)
        fields.append(field_head(5, inner))
    graph_size = len(graph_head) + sum(len(f) for f in fields) + sum(
        size + (len(head) if head is not None else 0) for _, head, _, size in parts)
    fh.write(_serialize(top, out_path))
    fh.write(field_head(7, graph_size))
    fh.write(graph_head)
    for field, (tensor, head, payload, size) in zip(fields, parts):
        fh.write(field)
        if head is None:  # a stored tensor of the source (or one no fast path encodes): as protobuf does
            fh.write(_serialize(tensor, out_path))
        elif size:  # shell fields, then the raw bytes from the array's memory
            fh.write(head)
            fh.write(payload)
        else:  # external: the data goes to the data file, the shell (with its location) here
            fh.write(head)
            external_to[0].write(payload)


def _shell(tensor) -> TensorProto:
    """The tensor's fields without its data."""
    shell = TensorProto()
    if isinstance(tensor, NewTensor):
        shell.name = tensor.name
        shell.dims.extend(tensor.array.shape)
        shell.data_type = onnx.helper.np_dtype_to_tensor_dtype(tensor.array.dtype)
        if tensor.doc_string:
            shell.doc_string = tensor.doc_string
        return shell
    copy_fields(tensor, shell, skip=_TYPED_FIELDS + ("raw_data", "external_data", "data_location"))
    return shell


def copy_fields(source, target, skip: tuple) -> None:
    """Every set field of protobuf message ``source`` except ``skip`` into ``target``."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if hasattr(value, "extend"):  # repeated
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _serialize(model: onnx.ModelProto, out_path: Path) -> bytes:
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GiB limit
        raise OutputError(f"model too large to serialize without external data: {exc}", path=out_path) from None


def _raw_bytes(tensor: TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    array = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(array).raw_data


def _point_to_file(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    for field in _TYPED_FIELDS:
        tensor.ClearField(field)
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
