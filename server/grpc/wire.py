"""A bounded look at a request's protobuf wire bytes before the full parse.

Parsing is fast for bytes and packed floats (memcpy), but not for fields the parser must
expand element by element: a 60 MB `shape` of varints, or millions of repeated entries, costs
the event loop seconds and gigabytes before any check of ours runs, and the parser holds the
GIL, so a thread would not help. This walks the message's fields (skipping each payload in O(1))
and refuses such a message, using the descriptor to know which fields are messages. Small
messages skip the walk: their worst case parses in about a millisecond.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from vae_serve.protowire import read_varint

if TYPE_CHECKING:
    # The class of generated messages' descriptors under protobuf's default backend (upb).
    from google._upb._message import Descriptor as UpbDescriptor

__all__ = ["PRESCAN_BYTES", "WireLimitError", "check_wire"]

PRESCAN_BYTES = 64 * 1024  # below this, any message parses in about a millisecond
MAX_FIELDS = 4096  # field occurrences in the whole message, nested ones included
MAX_VARINT_BYTES = 64 * 1024  # packed varints (shapes, counts) in the whole message
MAX_DEPTH = 16

_VARINT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_ENUM,
    }
)


class WireLimitError(ValueError):
    """The message is shaped so that parsing it would cost far more than its size suggests."""


class _Budget:
    def __init__(self) -> None:
        self.fields = MAX_FIELDS
        self.varint_bytes = MAX_VARINT_BYTES


def _walk(
    data: memoryview,
    pos: int,
    end: int,
    descriptor: Descriptor | UpbDescriptor | None,
    depth: int,
    budget: _Budget,
) -> None:
    if depth > MAX_DEPTH:
        raise WireLimitError(f"messages nested deeper than {MAX_DEPTH}")
    fields = descriptor.fields_by_number if descriptor is not None else {}
    while pos < end:
        budget.fields -= 1
        if budget.fields < 0:
            raise WireLimitError(f"more than {MAX_FIELDS} fields or repeated entries")
        tag, pos = read_varint(data, pos, end, WireLimitError)
        wire_type, field = tag & 7, fields.get(tag >> 3)
        if wire_type == 0:
            _, pos = read_varint(data, pos, end, WireLimitError)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = read_varint(data, pos, end, WireLimitError)
            if pos + length > end:
                raise WireLimitError("a field runs past the end of its message")
            if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(data, pos, pos + length, field.message_type, depth + 1, budget)
            elif field is not None and field.type in _VARINT_TYPES:  # a packed repeated varint
                budget.varint_bytes -= length
                if budget.varint_bytes < 0:
                    raise WireLimitError(f"over {MAX_VARINT_BYTES} bytes of packed varints ({field.name})")
            pos += length
        else:
            raise WireLimitError(f"wire type {wire_type} is not accepted")
    if pos != end:
        raise WireLimitError("a field runs past the end of its message")


def check_wire(data: bytes, descriptor: Descriptor | UpbDescriptor) -> None:
    """Raise WireLimitError if `data` (a serialized `descriptor` message) is costly to parse."""
    if len(data) < PRESCAN_BYTES:
        return
    view = memoryview(data)
    _walk(view, 0, len(view), descriptor, 0, _Budget())
