"""What a call leaves behind besides its metrics: its span (tracing on) and its access-log line
(`--access-log`). The call scope (protocol/scope.py), which every request of both front ends runs
inside, `begin`s and `end`s one `Call` per request, and the data plane `note`s on it the model,
version and rows it computed. With both off, `begin` returns None after two global reads and
nothing else here runs.

The access log is the `vae_serve.access` logger at INFO, one line per call: method (the metrics'
label: `Decode`, `http.Decode`), model, version, rows, status (the gRPC code name, and the HTTP
status over HTTP), duration, peer and request id (the log filter's). Everything in it is plain:
the request id was checked (calls.py) and the peer is cut to plain characters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_trace_id, set_span_in_context

from vae_serve.server.protocol.calls import request_id

from . import tracing

__all__ = ["ACCESS", "Call", "begin", "end", "note", "set_access_log"]

ACCESS = logging.getLogger("vae_serve.access")
MAX_PEER = 96
_UNPLAIN = re.compile(r"[^A-Za-z0-9.:\[\]_%-]")  # what addresses are made of (ipv6 zones included)
# The codes that say the server failed, as OpenTelemetry's gRPC conventions count them; a caller's
# mistake (INVALID_ARGUMENT, NOT_FOUND, ...) leaves the span's status unset.
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}

_access_log = False
Carrier = Mapping[str, str] | Iterable[tuple[str, object]] | None
_current: ContextVar[Call | None] = ContextVar("call", default=None)


def set_access_log(on: bool) -> None:
    """`--access-log`: the entry point's logging setup says whether calls write one."""
    global _access_log
    _access_log = on


class Call:
    """One request being observed; `note` fills in what the data plane knows."""

    __slots__ = ("_context", "_current", "method", "model", "peer", "rows", "span", "version")

    def __init__(self, method: str, peer: str) -> None:
        self.method, self.peer = method, _UNPLAIN.sub("?", peer[:MAX_PEER])
        self.model = self.version = "-"
        self.rows = 0
        self.span: Span | None = None
        self._context: Token[otel_context.Context] | None = None
        self._current: Token[Call | None] | None = None


def note(model: str, version: str, rows: int) -> None:
    """The model, version and rows the current call computed (for its span and access line)."""
    call = _current.get()
    if call is not None:
        call.model, call.version, call.rows = model, version, rows


def begin(method: str, carrier: Carrier, peer: Callable[[], str], protocol: str) -> Call | None:
    """Start observing a call, None when neither tracing nor the access log is on. `carrier`: the
    call's gRPC metadata or HTTP headers (the caller's trace context is read from them); `peer()`:
    who called; `protocol`: "grpc" or "http"."""
    if tracing.tracer is None and not _access_log:
        return None
    call = Call(method, peer())
    if tracing.tracer is not None:
        parent = tracing.extract(carrier)
        attributes = {
            "rpc.system": protocol,
            "rpc.method": method,
            "network.peer.address": call.peer,
            "vae.request_id": request_id.get(),
        }
        call.span = tracing.tracer.start_span(method, parent, SpanKind.SERVER, attributes)
        call._context = otel_context.attach(set_span_in_context(call.span, parent))
    call._current = _current.set(call)
    return call


def end(
    call: Call, code: grpc.StatusCode, seconds: float, http_status: int | None = None
) -> dict[str, str] | None:
    """Close the call's span and write its access line; returns the latency histogram's exemplar
    (the trace id of a sampled call), or None."""
    if call._current is not None:
        _current.reset(call._current)
    exemplar = None
    if _access_log:  # first: inside the call's span, so the line carries its trace id
        _write_access(call, code.name, seconds, http_status)
    if call.span is not None:
        span = call.span
        span.set_attributes(
            {
                "vae.model": call.model,
                "vae.model_version": call.version,
                "vae.rows": call.rows,
                "rpc.grpc.status_code": code.value[0],
            }
        )
        if http_status is not None:
            span.set_attribute("http.response.status_code", http_status)
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
        assert call._context is not None  # attached with the span, in begin
        otel_context.detach(call._context)
        sampled = span.get_span_context()
        if sampled.trace_flags.sampled:
            exemplar = {"trace_id": format_trace_id(sampled.trace_id)}
    return exemplar


def _write_access(call: Call, status: str, seconds: float, http_status: int | None) -> None:
    fields = {
        "method": call.method,
        "model": call.model,
        "version": call.version,
        "rows": call.rows,
        "status": status,
        "duration_ms": round(seconds * 1e3, 3),
        "peer": call.peer,
    }
    if http_status is not None:
        fields["http_status"] = http_status
    shown = status if http_status is None else f"{http_status} {status}"
    ACCESS.info(
        "%s %s/%s rows=%d %s %.3f ms peer=%s",
        call.method,
        call.model,
        call.version,
        call.rows,
        shown,
        seconds * 1e3,
        call.peer,
        extra=fields,
    )
