"""What every HTTP route shares with the gRPC edge (edge.py): a request id, admission of data-plane
work, the request metrics, its span and access line (observe.py), and one error table; plus
reading a body within the message limit.

A handler raises the domain errors of `vae_serve.errors`; `endpoint` answers them as
`{"error": "..."}` with the status of `status.HTTP_STATUS`, and anything else as a generic 500
whose traceback is logged. The metrics record HTTP calls under `http.<Method>` with the gRPC code
name of the outcome, so one dashboard query covers both front ends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from vae_serve.errors import InvalidInput, TooLarge
from vae_serve.server import observe
from vae_serve.server.calls import REQUEST_ID_HEADER, request_id, request_id_from
from vae_serve.server.drain import Activity
from vae_serve.server.metrics import Metrics
from vae_serve.server.status import http_status_for

from .limits import JSON_BYTES_PER_VALUE, MAX_JSON_BYTES, is_count
from .stats import Stats

__all__ = [
    "Front",
    "check_json_reply",
    "endpoint",
    "error_response",
    "json_response",
    "read_body",
    "wants_png",
]

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # what the access log and span say of a call cancelled before its answer (nginx's)
RETRY_AFTER_S = "1"  # for 429 and 503: both mean "come back shortly"
JSON = "application/json"


class Front:
    """What the routes need, handed to them through `app.state.front`: no globals."""

    def __init__(
        self, dataplane: Any, metrics: Metrics, activity: Activity, stats: Stats, extensions: Any
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.activity = activity
        self.stats = stats
        self.extensions = extensions  # Triton's (oip_extensions.TritonExtensions)


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    response = json_response({"error": message}, status)
    if status in (429, 503):
        response.headers["retry-after"] = RETRY_AFTER_S
    return response


def wants_png(request: Request) -> bool:
    """Content negotiation, as far as this API needs it: a PNG when the client accepts one and
    does not prefer JSON."""
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept


Handler = Callable[[Front, Request], Awaitable[Response]]


def endpoint(
    method: str, work: bool = False, probe: bool = False
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a route: `method` names it in metrics (`http.<method>`); `work`: it takes a data-plane
    slot (--max-concurrent-rpcs), as Encode, Decode, Sample and ModelInfer do over gRPC; `probe`:
    a health check, which the drain does not wait for (as gRPC health checks are not counted)."""
    label = f"http.{method}"

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            front: Front = request.app.state.front
            rid = request_id_from(((REQUEST_ID_HEADER, request.headers.get(REQUEST_ID_HEADER)),))
            token = request_id.set(rid)
            call = observe.begin(label, request.headers, functools.partial(_peer, request), "http")
            in_flight = front.metrics.in_flight_for(label)
            in_flight.inc()
            if not probe:
                front.activity.started()
            began, code, admitted, response = time.perf_counter(), grpc.StatusCode.OK, False, None
            try:
                if work:
                    front.activity.admit()
                    admitted = True
                response = await handler(front, request)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except ClientDisconnect:
                code = grpc.StatusCode.CANCELLED
                response = error_response(400, "the client went away before its request arrived")
            except Exception as exc:
                status, code, message = http_status_for(exc)
                if status == 500:
                    log.exception("%s failed", label)
                response = error_response(status, message)
            finally:
                if admitted:
                    front.activity.release()
                in_flight.dec()
                if not probe:
                    front.activity.finished()
                seconds = time.perf_counter() - began
                http_status = CLIENT_CLOSED if response is None else response.status_code
                exemplar = None if call is None else observe.end(call, code, seconds, http_status)
                front.metrics.record_request(label, code.name, seconds, exemplar)
                request_id.reset(token)
            response.headers[REQUEST_ID_HEADER] = rid
            if not front.dataplane.state.ready:  # draining: send keep-alive clients elsewhere
                response.headers["connection"] = "close"
            return response

        return route

    return wrap


def _peer(request: Request) -> str:
    client = request.client
    return "-" if client is None else f"{client.host}:{client.port}"


def check_json_reply(values: int, instead: str) -> None:
    """Refuse (413) before computing a JSON reply of `values` numbers over MAX_JSON_BYTES;
    `instead`: what to ask for instead."""
    if values * JSON_BYTES_PER_VALUE > MAX_JSON_BYTES:
        raise TooLarge(
            f"a JSON reply of {values} values would be over the {MAX_JSON_BYTES}-byte JSON limit; "
            f"send fewer rows or {instead}"
        )


async def read_body(request: Request, limit: int, what: str = "message limit (--max-message-bytes)") -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit`: from Content-Length before
    a byte is read, or while reading a body sent without one. Compressed bodies are refused: their
    decompressed size would not be bounded by what was read. `what`: the limit, as errors name it."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise InvalidInput(f"Content-Encoding {encoding[:32]!r} is not supported; send the body uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not is_count(declared):
            raise InvalidInput("Content-Length is not a number")
        if int(declared) > limit:
            raise TooLarge(_too_large(int(declared), limit, what))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(_too_large(size, limit, what))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, what: str) -> str:
    return f"body of {size}+ bytes is over the {limit}-byte {what}; send fewer rows"
