"""grpcio, and its health and reflection packages, beyond their documented API: all that the gRPC
server needs of their insides.

registration.py parses every request leniently and bounds the wait for a unary call's message,
which takes the handlers the generated code builds and the way grpc.aio runs them; health.py ends
`Watch` streams itself, which takes the health servicer's state. No public hook reaches either.
What this module relies on:

- Generated registration: protoc's `add_XServicer_to_server(servicer, server)` (ours, health's,
  reflection's) builds a `grpc.RpcMethodHandler` per method and hands the dict, by service name, to
  `server.add_registered_method_handlers` (besides a generic handler for the same methods to
  `server.add_generic_rpc_handlers`). `generated_handlers` runs it against a recorder to take the
  handlers; `add_handlers` registers rewritten ones both ways, as the generated code does.
- Generated deserializers: a handler's `request_deserializer` is the request class's bound
  `FromString` classmethod, the only way from a handler to its message class.
- A unary method served as stream-unary (`unary_as_stream`): on the wire the two are the same,
  and grpc.aio hands a unary call to a request-streaming handler, whose `context.read()` then
  returns the one message, or `grpc.aio.EOF`.
- Each call's handler runs in a task of its own, and cancelling that task while it awaits
  `context.read()` leaves the call open to be answered (registration.py's receive deadline).
- grpcio-health-checking's asyncio `HealthServicer` keeps each service's status in
  `_server_status`, and in `_server_watchers` (a defaultdict) one `asyncio.Condition` per watched
  service, which `set` and `enter_graceful_shutdown` notify under its lock. `HealthBase` reads
  them, for health.py's `Watch` to wait as the base class's own does.

`WRITTEN_FOR` holds the versions this was written for, the ranges pyproject.toml allows;
tests/server/test_grpc_internals.py checks every point above against the installed packages: run
it before raising the caps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2

__all__ = [
    "WRITTEN_FOR",
    "HealthBase",
    "add_handlers",
    "generated_handlers",
    "request_class",
    "unary_as_stream",
]

# Distribution: (lowest version, first version not allowed), as pyproject.toml's lines say.
WRITTEN_FOR = {
    "grpcio": ("1.81.1", "1.83"),
    "grpcio-health-checking": ("1.81.1", "1.82"),
    "grpcio-reflection": ("1.81.1", "1.82"),
}

Handlers = dict[str, grpc.RpcMethodHandler]


class _Recorder:
    """Stands in for the server while a generated `add_*_to_server` runs."""

    def __init__(self) -> None:
        self.services: dict[str, Handlers] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        """Ignored: the same handlers arrive by name in `add_registered_method_handlers`."""

    def add_registered_method_handlers(self, service: str, handlers: Handlers) -> None:
        self.services[service] = dict(handlers)


def generated_handlers(add: Callable[[Any, Any], None], servicer: object) -> dict[str, Handlers]:
    """The handlers, by service and method, that `add(servicer, server)` would register."""
    recorder = _Recorder()
    add(servicer, recorder)
    if not recorder.services:
        name = getattr(add, "__qualname__", repr(add))
        raise RuntimeError(f"{name} registered no handlers by name: grpc_internals.py needs a look")
    return recorder.services


def add_handlers(server: grpc.aio.Server, service: str, handlers: Handlers) -> None:
    """Register `handlers` for `service` as generated code does: by name, and as a generic handler."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def request_class(handler: grpc.RpcMethodHandler) -> type[Message]:
    """The message class of a generated handler's requests."""
    parse = handler.request_deserializer
    cls = getattr(parse, "__self__", None)
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise TypeError(f"cannot make {parse!r} lenient: not a generated FromString")
    return cls


def unary_as_stream(
    behavior: Callable[..., Any], parse: Callable[[bytes], Any], serialize: Callable[[Any], bytes] | None
) -> grpc.RpcMethodHandler:
    """A handler for a unary method that reads its one message itself: `behavior(requests,
    context)` calls `context.read()`."""
    return grpc.stream_unary_rpc_method_handler(behavior, parse, serialize)


class HealthBase(health.aio.HealthServicer):
    """grpcio-health-checking's asyncio servicer, with its statuses and their conditions in reach."""

    # The base class's own state; its stubs leave private attributes out.
    _server_status: MutableMapping[str, int]
    _server_watchers: MutableMapping[str, asyncio.Condition]

    def status(self, service: str) -> int:
        """The service's status as last set; SERVICE_UNKNOWN if it never was."""
        return self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)

    def changes(self, service: str) -> asyncio.Condition:
        """What the servicer notifies, holding it, when the service's status is set (made here on
        first use, and then kept)."""
        return self._server_watchers[service]

    def all_changes(self) -> list[asyncio.Condition]:
        return list(self._server_watchers.values())
