"""Writing the ``.caffemodel``: a binary NetParameter listing every layer with blobs, by name,
each blob with its explicit ``shape`` and float ``data`` in Caffe's layout.

Layer headers go through the protobuf schema; the (large) float payloads are emitted as
already-encoded packed fields, which protobuf's wire format allows (a message is the
concatenation of its fields), and written straight from the arrays' memory: no copy of a
60M-parameter net's data is made on the way to the file.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ConversionError
from ..shared.protobuf_wire import field_head
from .build import BuiltNet
from .context import BlobRef
from .schema import caffe_pb

_LAYER_FIELD = 100  # NetParameter.layer
_BLOBS_FIELD = 7  # LayerParameter.blobs
_DATA_FIELD = 5  # BlobProto.data (packed float)


def _length_delimited(number: int, chunks: list) -> list:
    """A length-delimited field as chunks (bytes / memoryviews): tag, length, payload.

    Chunks are never joined, so a large blob's float data is written straight from its array."""
    size = sum(len(c) for c in chunks)
    return [field_head(number, size), *chunks]


def encode_blob(values: np.ndarray, shape: tuple[int, ...]) -> list:
    """A serialized BlobProto as chunks: ``shape { dim ... }`` then the packed float32 data.

    A 0-d blob (PReLU with channel_shared) is written with the legacy 4-D fields 1x1x1x1,
    which Caffe's shape check accepts for it and which OpenCV reads as one value.
    """
    if len(shape) == 0:
        head = caffe_pb.BlobProto(num=1, channels=1, height=1, width=1).SerializeToString()
    else:
        head = caffe_pb.BlobProto(shape=caffe_pb.BlobShape(dim=list(shape))).SerializeToString()
    data = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    return [head, *_length_delimited(_DATA_FIELD, [memoryview(data).cast("B")])]


def blob_array(module: torch.nn.Module, ref: BlobRef) -> np.ndarray:
    """The current value of one blob, in Caffe's layout."""
    tensor = getattr(module.get_submodule(ref.module_path), ref.attribute).detach()
    if ref.layout == "transpose":
        tensor = tensor.t()
    return tensor.to("cpu", torch.float32).contiguous().numpy().reshape(ref.caffe_shape)


def caffemodel_chunks(net_name: str, built: BuiltNet, module: torch.nn.Module, passthrough=()) -> list:
    """The whole file, as chunks to write in order (their concatenation is the NetParameter).

    ``passthrough``: (name, type, [BlobProto]) of layers to copy unchanged."""
    chunks: list = [caffe_pb.NetParameter(name=net_name).SerializeToString()] if net_name else []
    for layer in built.param_layers:
        head = caffe_pb.LayerParameter(name=layer.name, type=layer.type, bottom=layer.bottom,
                                       top=layer.top).SerializeToString()
        body = [head]
        for ref in layer.blobs:
            array = blob_array(module, ref)
            if not np.isfinite(array).all():
                raise ConversionError(f"layer {layer.name!r}: its {ref.attribute} holds non-finite values; "
                                      "nothing written")
            body.extend(_length_delimited(_BLOBS_FIELD, encode_blob(array, ref.caffe_shape)))
        chunks.extend(_length_delimited(_LAYER_FIELD, body))
    for name, type_, stored in passthrough:
        body = [caffe_pb.LayerParameter(name=name, type=type_).SerializeToString()]
        for blob in stored:
            body.extend(_length_delimited(_BLOBS_FIELD, [blob.SerializeToString()]))
        chunks.extend(_length_delimited(_LAYER_FIELD, body))
    return chunks


def write_caffemodel(path, net_name: str, built: BuiltNet, module: torch.nn.Module, passthrough=()) -> None:
    """Atomically: everything is encoded (and checked finite) before the file is created."""
    from ...atomic import atomic_path

    chunks = caffemodel_chunks(net_name, built, module, passthrough)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
