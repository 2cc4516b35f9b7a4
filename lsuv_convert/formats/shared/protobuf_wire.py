"""The two pieces of protobuf's wire format the streamed writers (ONNX, Caffe) encode by hand: a
varint, and the head of a length-delimited field. Writing a large message this way puts tensor
bytes straight into the file instead of building the whole serialized message in memory."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a base-128 varint, least significant group first."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_head(number: int, length: int) -> bytes:
    """The tag (wire type 2) and length that precede a length-delimited field's ``length`` bytes."""
    return varint((number << 3) | 2) + varint(length)
