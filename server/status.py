"""The one table from domain error to gRPC status, and the wrapper every RPC goes through.

The wrapper also records the request metrics (latency and count by method and final status
code, in-flight gauge), so every front end gets identical error handling and observability.
Unexpected exceptions are logged with their traceback and reach the client only as INTERNAL
with a generic message: internals never leak.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from vae_serve.errors import (
    DeadlineExceeded,
    Draining,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    ServingError,
    TooLarge,
)

from .drain import Activity
from .metrics import Metrics
from .registration import Unreadable

__all__ = ["STATUS_CODES", "rpc", "status_for"]

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    Draining: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls], str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server logged the details"


Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def rpc(method: str, work: bool = False) -> Callable[[Handler], Handler]:
    """Decorate a servicer method (whose servicer has `.dataplane`) with status mapping and metrics.
    `work`: a data-plane call, admitted against `--max-concurrent-rpcs` (control calls are not)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
            metrics: Metrics = self.dataplane.metrics
            activity: Activity = self.dataplane.activity
            in_flight = metrics.in_flight_for(method)
            in_flight.inc()
            activity.started()
            began = time.perf_counter()
            code, message, admitted = grpc.StatusCode.OK, "", False
            try:
                if isinstance(request, Unreadable):
                    code, message = request.code, request.details
                else:
                    if work:
                        activity.admit()
                        admitted = True
                    return await handler(self, request, context)
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
                    activity.release()
                in_flight.dec()
                activity.finished()
                metrics.record_request(method, code.name, time.perf_counter() - began)
            # abort raises, and its exception lands in a reference cycle with this frame, freed only
            # by the cyclic GC: without this the request (up to --max-message-bytes) lives as long.
            del request
            await context.abort(code, message)  # reached only on failure

        return wrapper

    return decorate
