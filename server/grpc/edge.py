"""The gRPC side of the call scope: the decorators every RPC of both gRPC services goes through.

Each call runs inside one `CallScope` (protocol/scope.py, shared with the HTTP routes): request
id, admission of data-plane work, span and access line, in-flight gauge, the drain's count, the
one status table, the traceback of an internal error, and the call's metrics by method and code.
What is gRPC's own stays here: a request the registration could not read (`Unreadable`) is answered
without calling the handler, the request id goes back in the trailing metadata, and a failure is
sent with `context.abort`. Unexpected exceptions reach the client only as INTERNAL with a generic
message: internals never leak.

    @data_plane_rpc   # Encode, Decode, Sample, ModelInfer: admitted against --max-concurrent-rpcs
    @control_rpc      # model info, readiness, metadata: never take a slot

The method name is the handler's own; the servicer hands in what is recorded to as its `edge`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from vae_serve.server.drain import Activity
from vae_serve.server.protocol.calls import REQUEST_ID_HEADER, request_id_from
from vae_serve.server.protocol.scope import CallScope, Method
from vae_serve.server.telemetry.metrics import Metrics

from .registration import Unreadable

__all__ = ["Edge", "control_rpc", "data_plane_rpc"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edge:
    """What the wrapper records to and admits with: given to each servicer, never looked up."""

    metrics: Metrics
    activity: Activity


class HasEdge(Protocol):
    @property
    def edge(self) -> Edge: ...


S = TypeVar("S", bound=HasEdge)
Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[S, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def _wrap(handler: Handler[S, Request, Response], work: bool) -> Handler[S, Request, Response]:
    method = Method(handler.__name__, "grpc", log, work=work)

    @functools.wraps(handler)
    async def wrapper(self: S, request: Request, context: grpc.aio.ServicerContext) -> Response:
        edge = self.edge
        metadata = context.invocation_metadata()
        rid = request_id_from(metadata)
        reply_metadata = ((REQUEST_ID_HEADER, rid),)
        with CallScope(method, edge.metrics, edge.activity, rid, metadata, context.peer) as call:
            if isinstance(request, Unreadable):
                call.code, call.message = request.code, request.details
            else:
                call.admit()
                response = await handler(self, request, context)
                context.set_trailing_metadata(reply_metadata)  # on failure, abort sends it
                return response
        # abort raises, and its exception lands in a reference cycle with this frame, freed only by
        # the cyclic GC: without this the request (up to --max-message-bytes) lives as long.
        del request
        await context.abort(call.code, call.message, reply_metadata)  # reached only on failure

    return wrapper


def data_plane_rpc(handler: Handler[S, Request, Response]) -> Handler[S, Request, Response]:
    """A data-plane call: admitted against `--max-concurrent-rpcs` (and refused while draining)."""
    return _wrap(handler, work=True)


def control_rpc(handler: Handler[S, Request, Response]) -> Handler[S, Request, Response]:
    """A control call (model info, readiness, metadata): never takes a data-plane slot."""
    return _wrap(handler, work=False)
