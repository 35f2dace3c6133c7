"""Registering a servicer with a gRPC server, tolerant of bytes that are not a valid message.

The generated `add_*Servicer_to_server` parses requests with `FromString`; bytes that do not
parse make gRPC answer UNKNOWN before any handler runs, so neither the status table nor the
metrics see them. Here parsing never raises: it yields a `MalformedRequest` that the `rpc`
wrapper turns into INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

__all__ = ["MalformedRequest", "add_service"]


@dataclass(frozen=True)
class MalformedRequest:
    message_type: str
    reason: str


def _lenient(cls: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return MalformedRequest(cls.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)

    return parse


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Serve every unary method of `service` from the same-named method of `servicer`."""
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient(request),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
