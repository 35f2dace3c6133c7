"""The call scope: what every request runs inside, whichever transport carried it.

One `with CallScope(...) as call:` block per request gives it its request id (the contextvar every
log line reads), its span and access line (observe.py), the in-flight gauge, the drain's count of
calls in handlers, admission of data-plane work (`call.admit()`), the status the one table in
status.py gives an exception (the traceback of an internal error logged), and on the way out
releases the slot and records the latency and count by method, code and model: before the block
ends, so before the answer goes out, and whoever sees the answer sees it counted. The model is the
one the request resolved (`note_model`, called by the data plane), "" for a request that resolved
none: a name a client sent never becomes a label. An exception the table
answers is swallowed, its status left in `call.code`, `call.message` (and `call.status`); a
cancellation goes on up.

A `with` block rather than a decorator, because each transport runs its own steps both inside it
(gRPC's unreadable requests, HTTP's body type check and client disconnect) and after it (gRPC's
abort, HTTP's error body and headers); and a plain one rather than `async with`, because no step
awaits, so entering and leaving cost two method calls and no coroutine.

    with CallScope(method, metrics, activity, rid, headers, peer) as call:
        call.admit()           # once the transport's own checks passed: a slot if the method is work
        answer = await handler(...)
    # here only on an error: answer it with call.code / call.message
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType

import grpc

from vae_serve.server.drain import Activity
from vae_serve.server.telemetry import observe
from vae_serve.server.telemetry.metrics import Metrics

from .calls import request_id
from .status import http_status_for, status_for

__all__ = ["CallScope", "Method", "hold_model", "note_model"]


@dataclass(frozen=True, slots=True)
class Method:
    """One method a front end serves, as its calls' scope needs it; built once, where it is wrapped.

    `name`: its label in metrics, spans and the access log (`Decode`, `http.Decode`); `protocol`:
    "grpc" or "http"; `log`: where its internal errors are logged (the front end's logger, so the
    line names who answered); `work`: `admit` takes a data-plane slot (--max-concurrent-rpcs);
    `counted`: the drain waits for its calls (health probes are not); `unanswered`: the
    transport's own status until one is set, for a transport that has one (HTTP: 499, the client
    closed), None for one that does not (gRPC): a status is then shown beside the code."""

    name: str
    protocol: str
    log: logging.Logger
    work: bool = False
    counted: bool = True
    unanswered: int | None = None


class CallScope:
    """One call, from its request id to its metrics; see the module docstring."""

    __slots__ = (
        "_activity",
        "_admitted",
        "_began",
        "_call",
        "_carrier",
        "_held",
        "_in_flight",
        "_method",
        "_metrics",
        "_peer",
        "_scope",
        "_token",
        "code",
        "message",
        "model",
        "request_id",
        "status",
    )

    def __init__(
        self,
        method: Method,
        metrics: Metrics,
        activity: Activity,
        rid: str,
        carrier: observe.Carrier,
        peer: Callable[[], str],
    ) -> None:
        """`rid`: the call's request id (calls.request_id_from); `carrier`: its gRPC metadata or
        HTTP headers, where the caller's trace context is read; `peer()`: who called."""
        self._method, self._metrics, self._activity = method, metrics, activity
        self._carrier, self._peer = carrier, peer
        self._admitted = False
        self._held: Callable[[], None] | None = None
        self.request_id = rid
        self.code = grpc.StatusCode.OK
        self.message = ""
        self.model = ""
        self.status = method.unanswered

    def __enter__(self) -> CallScope:
        method = self._method
        self._token: Token[str] = request_id.set(self.request_id)
        self._scope: Token[CallScope | None] = _current.set(self)
        self._call = observe.begin(method.name, self._carrier, self._peer, method.protocol)
        self._in_flight = self._metrics.in_flight_for(method.name)
        self._in_flight.inc()
        if method.counted:
            self._activity.started()
        self._began = time.perf_counter()
        return self

    def admit(self) -> None:
        """Take a data-plane slot if the method is work (given back on the way out), or raise why
        not (Overloaded, Draining). A control call passes: it never takes one."""
        if self._method.work:
            self._activity.admit()
            self._admitted = True

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        """Record the call; True (swallow it) for an exception the status table answered."""
        method = self._method
        try:
            if exc is None:
                return False
            if isinstance(exc, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED
                return False
            if not isinstance(exc, Exception):
                return False  # KeyboardInterrupt, SystemExit: not the call's to answer
            if self.status is None:
                self.code, self.message = status_for(exc)
            else:
                self.status, self.code, self.message = http_status_for(exc)
            if self.code is grpc.StatusCode.INTERNAL:
                method.log.error("%s failed", method.name, exc_info=exc)
            return True
        finally:
            # Recorded before the block ends, so before the answer goes out: whoever sees it, sees it counted.
            try:
                if self._admitted:
                    self._activity.release()
                if self._held is not None:
                    self._held()
                self._in_flight.dec()
                if method.counted:
                    self._activity.finished()
                seconds = time.perf_counter() - self._began
                call = self._call
                exemplar = None if call is None else observe.end(call, self.code, seconds, self.status)
                self._metrics.record_request(method.name, self.code.name, seconds, exemplar, self.model)
            finally:
                _current.reset(self._scope)
                request_id.reset(self._token)


_current: ContextVar[CallScope | None] = ContextVar("call_scope", default=None)


def note_model(name: str) -> None:
    """The served model the current call resolved (its repository name): the `model` label of its
    metrics, and its span's and access line's model. Outside a call, nothing."""
    scope = _current.get()
    if scope is not None:
        scope.model = name
        if scope._call is not None:
            scope._call.model = name


def hold_model(release: Callable[[], None]) -> bool:
    """Call `release` when the current call ends (an unload waits for the calls that hold its
    model); False outside a call, where nothing is held."""
    scope = _current.get()
    if scope is None or scope._held is not None:
        return False
    scope._held = release
    return True
