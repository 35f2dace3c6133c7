"""Just enough of the protobuf wire format to find ONNX external data, without the `onnx` package.

The server does not depend on `onnx` (a training extra), and ONNX Runtime, given a model as bytes,
looks for external data relative to the process's working directory. So before a graph reaches ORT
its bytes are walked along the messages that can hold a tensor (graphs, nodes, attributes,
functions, training info, sparse tensors), skipping everything else unread, and any tensor with
`data_location: EXTERNAL` or `external_data` entries is found. Field numbers are onnx.proto's.
"""

from __future__ import annotations

from vae_serve.protowire import read_varint

__all__ = ["MalformedProtobuf", "has_external_data"]

MAX_DEPTH = 64  # nested graphs (If/Loop bodies); deeper is hostile, not a model

_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = range(8)
# For each message: its length-delimited fields that are messages which can hold a tensor.
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1


class MalformedProtobuf(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    return read_varint(buf, pos, end, MalformedProtobuf)


def has_external_data(buf: bytes) -> bool:
    """Whether any tensor in this serialized ModelProto keeps its data outside it."""
    stack = [(_MODEL, 0, len(buf), 0)]
    while stack:
        kind, pos, end, depth = stack.pop()
        children = _CHILDREN[kind]
        while pos < end:
            key, pos = _varint(buf, pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise MalformedProtobuf(f"field number 0 at byte {pos}")
            if wire == 0:
                value, pos = _varint(buf, pos, end)
                if kind == _TENSOR and number == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
                    return True
                continue
            if wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(buf, pos, end)
                start, pos = pos, pos + length
                if pos <= end:
                    if kind == _TENSOR and number == _TENSOR_EXTERNAL_DATA:
                        return True
                    if number in children:
                        if depth >= MAX_DEPTH:
                            raise MalformedProtobuf(f"nested more than {MAX_DEPTH} deep")
                        stack.append((children[number], start, pos, depth + 1))
            else:
                raise MalformedProtobuf(f"wire type {wire} at byte {pos}")
            if pos > end:
                raise MalformedProtobuf(f"field {number} runs past the end of its message")
    return False
