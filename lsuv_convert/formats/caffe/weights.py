"""Reading trained blobs from a binary ``.caffemodel`` and matching them to layers by name.

Caffe's rules (``Net::CopyTrainedLayersFrom``): blobs go to the layer of the same name; the
number of blobs and each shape must match (a blob stored with the legacy 4-D
num/channels/height/width fields matches a shape that, padded with leading 1s, equals it);
layers of the file the net doesn't have are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ModelFormatError
from .schema import caffe_pb


@dataclass
class StoredLayer:
    name: str
    type: str
    blobs: list  # caffe BlobProto messages


def read_weights(path: Path) -> dict[str, StoredLayer]:
    """Layers with blobs of a ``.caffemodel`` (current or V1 format), by name."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read weights: {exc.strerror or exc}", path=path) from None
    net = caffe_pb.WeightsNet()
    try:
        net.ParseFromString(data)
    except Exception:  # noqa: BLE001 - DecodeError, raised as various types by the protobuf backends
        raise ModelFormatError("not a binary .caffemodel (NetParameter): cannot decode it", path=path) from None
    layers: dict[str, StoredLayer] = {}
    for layer in net.layer:
        if len(layer.blobs):
            layers[layer.name] = StoredLayer(layer.name, layer.type, list(layer.blobs))
    for layer in net.layers:
        if len(layer.blobs):
            layers[layer.name] = StoredLayer(layer.name, f"V1 type {layer.type}", list(layer.blobs))
    if not layers:
        raise ModelFormatError("the weights file holds no layer with blobs (is it a .caffemodel?)", path=path)
    return layers


def stored_shape(blob) -> tuple[tuple[int, ...], bool]:
    """(dims, legacy): the blob's shape and whether it uses the deprecated 4-D fields."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim), False
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width), True
    return (), False


def shape_matches(blob, expected: tuple[int, ...]) -> bool:
    dims, legacy = stored_shape(blob)
    if legacy:
        return len(expected) <= 4 and (1,) * (4 - len(expected)) + tuple(expected) == dims
    return dims == tuple(expected)


def blob_values(blob, expected: tuple[int, ...]) -> np.ndarray:
    """The blob's values (float or double data) as float32 in ``expected`` shape."""
    if len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        values = np.array(blob.data, dtype=np.float32)
    count = int(np.prod(expected, dtype=np.int64))
    if values.size != count:
        raise ValueError(f"holds {values.size} values for shape {tuple(expected)} ({count} values)")
    return values.reshape(expected)


def fmt_shape(shape) -> str:
    return str(tuple(int(d) for d in shape))


def match_blobs(stored: StoredLayer, expected: list[tuple[int, ...]], roles: list[str], where: str,
                path: Path, source: str) -> list[np.ndarray]:
    """The stored blobs of one layer checked against what the net needs, as arrays.

    Errors name the net file (``path``) and the layer, and ``source`` (where the blobs are)."""
    if len(stored.blobs) != len(expected):
        needs = ", ".join(f"{r} {fmt_shape(s)}" for r, s in zip(roles, expected))
        raise ModelFormatError(
            f"{where}: {source} has {len(stored.blobs)} blob(s) for it, the net needs {len(expected)} ({needs})",
            path=path)
    arrays = []
    for blob, shape, role in zip(stored.blobs, expected, roles):
        if not shape_matches(blob, shape):
            dims, legacy = stored_shape(blob)
            raise ModelFormatError(
                f"{where}: its {role} blob in {source} has shape {fmt_shape(dims)}"
                f"{' (legacy 4-D)' if legacy else ''}, the net expects {fmt_shape(shape)}", path=path)
        try:
            arrays.append(blob_values(blob, shape))
        except ValueError as exc:
            raise ModelFormatError(f"{where}: its {role} blob in {source} {exc}", path=path) from None
    return arrays
