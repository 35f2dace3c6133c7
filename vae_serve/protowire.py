"""The protobuf wire format's varint, read by hand where a full parse would cost too much (a
request's shape before parsing it, an ONNX file's external data without the `onnx` package, the
packed floats of a typed tensor)."""

from __future__ import annotations

__all__ = ["read_varint"]


def read_varint(
    data: bytes | memoryview, pos: int, end: int, error: type[ValueError] = ValueError
) -> tuple[int, int]:
    """The varint at `pos` and the position after it; `error` if it is truncated or over 64 bits."""
    value, shift = 0, 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise error(f"truncated or overlong varint at byte {pos}")
