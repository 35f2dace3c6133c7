"""The wrapper every RPC of both front ends goes through, at the edge of the server.

It gives each call its request id, admits data-plane work, answers with the status the one table
in status.py gives an exception, and records the call's metrics (latency and count by method and
final code, in-flight gauge) and, when on, its span and access-log line (observe.py), so every
front end gets identical error handling and observability.
Unexpected exceptions are logged with their traceback (and the request id) and reach the client
only as INTERNAL with a generic message: internals never leak.

    @data_plane_rpc   # Encode, Decode, Sample, ModelInfer: admitted against --max-concurrent-rpcs
    @control_rpc      # model info, readiness, metadata: never take a slot

The method name is the handler's own; the servicer hands in what is recorded to as its `edge`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from vae_serve.server.drain import Activity
from vae_serve.server.protocol.calls import REQUEST_ID_HEADER, request_id, request_id_from
from vae_serve.server.protocol.status import status_for
from vae_serve.server.telemetry import observe
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
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: S, request: Request, context: grpc.aio.ServicerContext) -> Response:
        edge = self.edge
        metadata = context.invocation_metadata()
        rid = request_id_from(metadata)
        token = request_id.set(rid)
        reply_metadata = ((REQUEST_ID_HEADER, rid),)
        call = observe.begin(method, metadata, context.peer, "grpc")
        try:
            in_flight = edge.metrics.in_flight_for(method)
            in_flight.inc()
            edge.activity.started()
            began = time.perf_counter()
            code, message, admitted = grpc.StatusCode.OK, "", False
            try:
                if isinstance(request, Unreadable):
                    code, message = request.code, request.details
                else:
                    if work:
                        edge.activity.admit()
                        admitted = True
                    response = await handler(self, request, context)
                    context.set_trailing_metadata(reply_metadata)  # on failure, abort sends it
                    return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, message = status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
            finally:
                # Recorded before the status goes out, so whoever sees the answer sees it counted.
                if admitted:
                    edge.activity.release()
                in_flight.dec()
                edge.activity.finished()
                seconds = time.perf_counter() - began
                exemplar = None if call is None else observe.end(call, code, seconds)
                edge.metrics.record_request(method, code.name, seconds, exemplar)
            # abort raises, and its exception lands in a reference cycle with this frame, freed only
            # by the cyclic GC: without this the request (up to --max-message-bytes) lives as long.
            del request
            await context.abort(code, message, reply_metadata)  # reached only on failure
        finally:
            request_id.reset(token)

    return wrapper


def data_plane_rpc(handler: Handler[S, Request, Response]) -> Handler[S, Request, Response]:
    """A data-plane call: admitted against `--max-concurrent-rpcs` (and refused while draining)."""
    return _wrap(handler, work=True)


def control_rpc(handler: Handler[S, Request, Response]) -> Handler[S, Request, Response]:
    """A control call (model info, readiness, metadata): never takes a data-plane slot."""
    return _wrap(handler, work=False)
