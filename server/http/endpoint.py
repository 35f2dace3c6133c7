"""The HTTP side of the call scope, and what every HTTP route shares: the `endpoint` decorator,
JSON and error responses, content negotiation, and reading a body within the message limit.

Each call runs inside one `CallScope` (protocol/scope.py, shared with the gRPC edge): request id,
admission of data-plane work, span and access line, in-flight gauge, the drain's count, the one
status table, the traceback of an internal error, and the call's metrics, recorded under
`http.<Method>` with the gRPC code name of the outcome, so one dashboard query covers both front
ends. What is HTTP's own stays here: the body type check, a client that went away mid-body (400),
the error body, the x-request-id response header, `connection: close` while draining, probes the
drain does not wait for, and 499 (client closed) for a call cancelled before its answer.

A route names the types of body it takes (`bodies`); one of any other type is refused (415)
before the handler runs, so that a web page cannot make the server compute with the bodies a
browser sends anywhere without a CORS preflight (text/plain, a form).

A handler raises the domain errors of `vae_serve.errors`; `endpoint` answers them as
`{"error": "..."}` with the status of `status.HTTP_STATUS`, and anything else as a generic 500
whose traceback is logged.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from vae_serve.errors import InvalidInput, TooLarge, UnsupportedMediaType, quote
from vae_serve.server.drain import Activity
from vae_serve.server.protocol.calls import REQUEST_ID_HEADER, request_id_from
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.protocol.oip_extensions import TritonExtensions
from vae_serve.server.protocol.scope import CallScope, Method
from vae_serve.server.telemetry.metrics import Metrics

from .limits import JSON_BYTES_PER_VALUE, MAX_JSON_BYTES, is_count
from .stats import Stats

__all__ = [
    "BINARY",
    "JSON",
    "JSON_BODY",
    "MAX_ACCEPT_ENTRIES",
    "Front",
    "body_type",
    "check_body_type",
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
BINARY = "application/octet-stream"
JSON_BODY = (JSON,)
MAX_ACCEPT_ENTRIES = 64  # of an Accept header, the media ranges read
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110's qvalue


class Front:
    """What the routes need, handed to them through `app.state.front`: no globals."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: Metrics,
        activity: Activity,
        stats: Stats,
        oip: TritonExtensions,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.activity = activity
        self.stats = stats
        self.oip = oip  # the Open Inference Protocol's service, with Triton's extensions


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    response = json_response({"error": message}, status)
    if status in (429, 503):
        response.headers["retry-after"] = RETRY_AFTER_S
    elif status == 401:  # the scheme a credential must use (RFC 9110, 11.6.1)
        response.headers["www-authenticate"] = "Bearer"
    return response


def wants_png(request: Request) -> bool:
    """Content negotiation, as far as this API needs it: a PNG when the client accepts one (its q
    above 0) and prefers it to JSON; a tie goes to the media type the client named more exactly,
    and else to JSON, as does a request with no Accept (curl's and httpx's `*/*` included)."""
    header = ",".join(request.headers.getlist("accept"))
    if not header.strip():
        return False
    ranges = _media_ranges(header)
    png = _preference(ranges, "image", "png")
    return png[0] > 0 and png > _preference(ranges, "application", "json")


def _media_ranges(header: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) of the first MAX_ACCEPT_ENTRIES entries of an Accept header; an entry
    that is not a media range with a valid q is skipped. Parameters other than q are ignored."""
    ranges = []
    for entry in header.split(",", MAX_ACCEPT_ENTRIES)[:MAX_ACCEPT_ENTRIES]:
        media, *parameters = entry.split(";")
        kind, slash, subtype = media.strip().lower().partition("/")
        if not (slash and kind and subtype) or (kind == "*" and subtype != "*"):
            continue
        q: float | None = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":  # what follows q is an accept-extension
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else None
                break
        if q is not None:
            ranges.append((kind, subtype, q))
    return ranges


def _preference(ranges: list[tuple[str, str, float]], kind: str, subtype: str) -> tuple[float, int]:
    """The q the client gives `kind/subtype`, from the most specific range that matches it (RFC
    9110, 12.5.1), and how specific that range is: 2 exact, 1 `kind/*`, 0 `*/*`, -1 none."""
    found = (0.0, -1)
    for their_kind, their_subtype, q in ranges:
        if their_kind == "*":
            specific = 0
        elif their_kind != kind:
            continue
        elif their_subtype == subtype:
            specific = 2
        elif their_subtype == "*":
            specific = 1
        else:
            continue
        if specific > found[1]:
            found = (q, specific)
    return found


def body_type(request: Request) -> str:
    """The media type of the request's body, lower case, without its parameters; "" if unlabelled."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_body_type(request: Request, bodies: tuple[str, ...]) -> None:
    """Refuse (415) a body whose type is none of `bodies`.

    A body with no Content-Type is JSON: tritonclient.http labels none of its bodies, and the
    KServe SDK (like httpx given raw bytes) leaves a JSON body unlabelled. A browser can send one
    too (a Blob without a type, with no preflight), but it adds Origin to every POST: from a
    browser, an unlabelled body is refused."""
    kind = body_type(request)
    if kind in bodies or (not kind and JSON in bodies and "origin" not in request.headers):
        return
    wanted = ", ".join(bodies)
    if not kind:
        raise UnsupportedMediaType(f"a browser's request needs a Content-Type; send {wanted}")
    raise UnsupportedMediaType(f"Content-Type {quote(kind)} is not taken here; send {wanted}")


Handler = Callable[[Front, Request], Awaitable[Response]]


def endpoint(
    method: str, work: bool = False, probe: bool = False, bodies: tuple[str, ...] = JSON_BODY
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a route: `method` names it in metrics (`http.<method>`); `work`: it takes a data-plane
    slot (--max-concurrent-rpcs), as Encode, Decode, Sample and ModelInfer do over gRPC; `probe`:
    a health check, which the drain does not wait for (as gRPC health checks are not counted);
    `bodies`: the media types a POST's body may have (check_body_type)."""
    scoped = Method(f"http.{method}", "http", log, work=work, counted=not probe, unanswered=CLIENT_CLOSED)

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def route(request: Request) -> Response:
            front: Front = request.app.state.front
            rid = request_id_from(((REQUEST_ID_HEADER, request.headers.get(REQUEST_ID_HEADER)),))
            peer = functools.partial(_peer, request)
            response: Response | None = None
            with CallScope(scoped, front.metrics, front.activity, rid, request.headers, peer) as call:
                try:
                    if request.method not in ("GET", "HEAD"):
                        check_body_type(request, bodies)
                    call.admit()
                    response = await handler(front, request)
                except ClientDisconnect:
                    call.code = grpc.StatusCode.CANCELLED
                    response = error_response(400, "the client went away before its request arrived")
                call.status = response.status_code
            if response is None:  # the scope answered an exception from the status table
                assert call.status is not None  # an HTTP method always has one
                response = error_response(call.status, call.message)
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
