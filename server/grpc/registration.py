"""Registering servicers with a gRPC server so that no request can break a status or hold a slot.

The generated `add_*Servicer_to_server` functions parse requests with `FromString`: bytes that do
not parse make gRPC answer UNKNOWN (with a Python exception name) before any handler runs, and a
call whose headers arrive without its message waits for it forever. Every service here (ours,
health and reflection alike) is registered through `register`, which rewrites its handlers:
- parsing never raises: bytes that do not parse, or whose wire shape would make parsing costly
  (wire.py), become an `Unreadable` request that the handler answers with INVALID_ARGUMENT;
- a unary call must deliver its request message within `--receive-timeout-s` of its headers, or
  it is answered DEADLINE_EXCEEDED and its slot freed. (A unary method is served as
  stream-unary to get there: on the wire the two are the same.)
What this takes of grpc's insides is in grpc_internals.py.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from . import grpc_internals as internals
from .wire import WireLimitError, check_wire

__all__ = ["ReceiveTimeout", "Unreadable", "add_service", "register"]


@dataclass(frozen=True)
class Unreadable:
    """A request the server could not read: what to answer instead of calling the handler."""

    code: grpc.StatusCode
    details: str


Parse = Callable[[bytes], Any]


def _lenient(cls: type[Message]) -> Parse:
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Unreadable:
        try:
            check_wire(data, cls.DESCRIPTOR)
            return cls.FromString(data)
        except (DecodeError, WireLimitError, ValueError, RuntimeError) as exc:
            reason = str(exc)[:200] or type(exc).__name__
            return Unreadable(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {name} ({reason})")

    return parse


class ReceiveTimeout:
    """Bounds how long a call may wait for its request message, at almost no cost per call: calls
    are queued in arrival order and one sweeper task cancels the reads that outlive `seconds`
    (a timer per call measured costlier under load)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.arrived = 0  # calls whose headers came (what a drain watches, with `waiting`)
        self.waiting = 0  # of them, still waiting for their message
        self._reading: deque[_Read] = deque()
        self._sweeper: asyncio.Task[None] | None = None

    async def read(self, context: grpc.aio.ServicerContext) -> Any:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="receive-timeout")
        task = asyncio.current_task()
        assert task is not None  # a coroutine that the event loop runs always runs in a task
        entry = _Read(time.monotonic() + self.seconds, task)
        self._reading.append(entry)
        self.arrived += 1
        self.waiting += 1
        try:
            request = await context.read()
        except asyncio.CancelledError:
            if not entry.timed_out:
                raise
            entry.task.uncancel()
            return Unreadable(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no request message within {self.seconds:g} s of the call's headers",
            )
        finally:
            entry.done = True
            self.waiting -= 1
        if request is grpc.aio.EOF:
            return Unreadable(grpc.StatusCode.INVALID_ARGUMENT, "the call ended before its request message")
        return request

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.seconds / 4))
            now, reading = time.monotonic(), self._reading
            while reading and (reading[0].done or reading[0].deadline <= now):
                entry = reading.popleft()
                if not entry.done:
                    entry.timed_out = True
                    entry.task.cancel()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


@dataclass
class _Read:
    deadline: float
    task: asyncio.Task[Any]
    done: bool = False
    timed_out: bool = False


def _unary(behavior: Callable, unreadable_ok: bool, receive: ReceiveTimeout) -> Callable:
    """A unary behavior served as stream-unary: read the one message (bounded in time), then call
    it. `unreadable_ok`: the behavior answers an `Unreadable` itself (the `rpc` wrapper does)."""

    async def handler(_requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        request = await receive.read(context)
        if isinstance(request, Unreadable) and not unreadable_ok:
            await context.abort(request.code, request.details)
        call = behavior(request, context)
        del request  # an abort's traceback outlives this frame: it must not keep the request alive
        return await call

    return handler


def _unary_stream(behavior: Callable) -> Callable:
    if inspect.isasyncgenfunction(behavior):

        async def generate(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Unreadable):
                await context.abort(request.code, request.details)
            async for response in behavior(request, context):
                yield response

        return generate

    async def write(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Unreadable):
            await context.abort(request.code, request.details)
        return await behavior(request, context)

    return write


def _stream_input(behavior: Callable, unreadable_ok: bool) -> Callable:
    """`unreadable_ok`: the behavior answers each `Unreadable` message itself (a stream of
    requests answers each on its own); else one ends the call."""

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Unreadable) and not unreadable_ok:
                await context.abort(request.code, request.details)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def generate(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for response in behavior(checked(requests, context), context):
                yield response

        return generate

    async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await behavior(checked(requests, context), context)

    return call


def _rewrite(
    handler: grpc.RpcMethodHandler, receive: ReceiveTimeout, unreadable_ok: bool
) -> grpc.RpcMethodHandler:
    parse = _lenient(internals.request_class(handler))
    serialize = handler.response_serializer
    # gRPC's handlers hold the one behavior that their streaming flags name; the other three are None.
    if not handler.request_streaming and not handler.response_streaming:
        assert handler.unary_unary is not None
        behavior = _unary(handler.unary_unary, unreadable_ok, receive)
        return internals.unary_as_stream(behavior, parse, serialize)
    if not handler.request_streaming:
        assert handler.unary_stream is not None
        return grpc.unary_stream_rpc_method_handler(_unary_stream(handler.unary_stream), parse, serialize)
    if not handler.response_streaming:
        assert handler.stream_unary is not None
        behavior = _stream_input(handler.stream_unary, unreadable_ok)
        return grpc.stream_unary_rpc_method_handler(behavior, parse, serialize)
    assert handler.stream_stream is not None
    behavior = _stream_input(handler.stream_stream, unreadable_ok)
    return grpc.stream_stream_rpc_method_handler(behavior, parse, serialize)


def _add(
    server: grpc.aio.Server,
    service: str,
    handlers: dict[str, grpc.RpcMethodHandler],
    receive: ReceiveTimeout,
    unreadable_ok: bool,
) -> None:
    rewritten = {name: _rewrite(handler, receive, unreadable_ok) for name, handler in handlers.items()}
    internals.add_handlers(server, service, rewritten)


def register(
    server: grpc.aio.Server, add: Callable[[Any, Any], None], servicer: object, receive: ReceiveTimeout
) -> None:
    """Register what a generated `add_XServicer_to_server(servicer, server)` would, with lenient,
    time-bounded handlers (for services whose handlers do not know `Unreadable`: they never see one)."""
    for service, handlers in internals.generated_handlers(add, servicer).items():
        _add(server, service, handlers, receive, unreadable_ok=False)


def add_service(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, receive: ReceiveTimeout
) -> None:
    """Serve every method of `service` from the same-named method of `servicer`, which answers an
    `Unreadable` request itself (with its metrics): a unary one is wrapped by edge.py
    (`data_plane_rpc` or `control_rpc`); a bidirectional stream answers each message."""
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        if method.client_streaming != method.server_streaming:
            raise TypeError(f"{method.full_name}: only unary and bidirectional methods are served here")
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    _add(server, service.full_name, handlers, receive, unreadable_ok=True)
