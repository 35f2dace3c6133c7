"""Connection options, the one error type, and the retry schedule: what both clients share.

Retries: every vae-serve RPC is idempotent, so a call that ends UNAVAILABLE (server down,
restarting or draining) is retried with exponential backoff and full jitter, within one deadline
for all of its attempts; retried attempts wait for the channel to be ready rather than failing at
once while gRPC reconnects.

Until a client's server has answered once, though, a refused connection, an unknown name or a
failed TLS handshake is most likely a wrong address, not a restart: such a client retries for
`connect_timeout` only, failing fast each time, and then says that nothing answers there.
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import Message

__all__ = [
    "DEFAULT_TARGET",
    "Attempts",
    "ClientOptions",
    "Link",
    "VaeServeError",
    "connect_failure",
    "from_rpc_error",
    "open_channel",
    "trace_metadata",
]

DEFAULT_TARGET = "127.0.0.1:50051"
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_VERSION_FIELD = "model_version"
_MODEL_FIELD = "model"

_Request = TypeVar("_Request", bound=Message)


class VaeServeError(Exception):
    """Any failed call: the gRPC status code and the server's (or the client's) message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def from_rpc_error(err: grpc.RpcError) -> VaeServeError:
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    return VaeServeError(code, details or code.name)


def invalid(details: str) -> VaeServeError:
    return VaeServeError(grpc.StatusCode.INVALID_ARGUMENT, details)


@dataclass(frozen=True)
class ClientOptions:
    target: str = DEFAULT_TARGET
    timeout: float = 10.0  # seconds for one request, its retries included; never infinite
    root_certificates: Path | str | None = None  # PEM CA bundle: use TLS and trust these
    tls: bool = False  # TLS with the system's trust store (implied by root_certificates)
    certificate_chain: Path | str | None = None  # PEM client certificate, for servers that demand mTLS
    private_key: Path | str | None = None  # its PEM key
    max_message_bytes: int = 64 * 1024 * 1024
    retries: int = 5  # further attempts after UNAVAILABLE
    connect_timeout: float = 1.0  # seconds a client that never reached its server keeps trying
    model: str = ""  # the model every call names; empty: the server's default model
    model_version: str = ""  # pin every call to this loaded version; empty: the server's latest
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    # W3C trace context to continue when the caller has no active OpenTelemetry span (vae-client:
    # the TRACEPARENT variable); a call inside an active span continues that span's trace instead.
    traceparent: str = ""

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout", "backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.timeout == 0:
            raise ValueError("timeout must be positive")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if self.max_message_bytes < 64 * 1024:
            raise ValueError(f"max_message_bytes must be at least 65536, got {self.max_message_bytes}")
        if self.traceparent and not _TRACEPARENT.fullmatch(self.traceparent):
            raise ValueError(
                "traceparent must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>), "
                f"got {self.traceparent[:80]!r}"
            )
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key go together")
        for name in ("root_certificates", "certificate_chain", "private_key"):
            if getattr(self, name) is not None:
                path = Path(getattr(self, name))
                if not path.is_file():
                    raise ValueError(f"{name.replace('_', ' ')} {path} not found")
                object.__setattr__(self, name, path)

    def channel_args(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # Reconnect soon after a server (re)starts, so retries find it.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.root_certificates is None and self.certificate_chain is None and not self.tls:
            return None

        def read(path: Path | str | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            read(self.root_certificates), read(self.private_key), read(self.certificate_chain)
        )


def trace_metadata(options: ClientOptions) -> tuple[tuple[str, str], ...] | None:
    """The W3C trace context a call sends: the caller's active OpenTelemetry span's, else the
    options' `traceparent`, else none. The client never imports OpenTelemetry: a caller with an
    active span has imported its API already, and only then is it used."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is not None:
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            parent = f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"
            state = span.trace_state.to_header() if span.trace_state else ""
            return (("traceparent", parent), ("tracestate", state)) if state else (("traceparent", parent),)
    return (("traceparent", options.traceparent),) if options.traceparent else None


def pinned(request: _Request, options: ClientOptions) -> _Request:
    """`request` with the options' model and model version, where it has fields for them."""
    fields = request.DESCRIPTOR.fields_by_name
    if options.model and _MODEL_FIELD in fields:
        setattr(request, _MODEL_FIELD, options.model)  # fields only some messages have
    if options.model_version and _VERSION_FIELD in fields:
        setattr(request, _VERSION_FIELD, options.model_version)
    return request


def open_channel(options: ClientOptions, aio: bool) -> grpc.Channel | grpc.aio.Channel:
    module = grpc.aio if aio else grpc
    credentials, args = options.credentials(), options.channel_args()
    if credentials is None:
        return module.insecure_channel(options.target, args)
    return module.secure_channel(options.target, credentials, args)


def backoff_delays(options: ClientOptions, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: retry i sleeps uniform(0, min(max, initial * 2^i))."""
    rng = rng or random.Random()
    for attempt in range(options.retries):
        yield rng.uniform(0, min(options.backoff_max, options.backoff_initial * 2**attempt))


# What gRPC's UNAVAILABLE details say when no connection could be made at all (grpc 1.6x-1.8x).
_CONNECT_FAILURES = (
    (re.compile(r"connection refused", re.I), "connection refused"),
    (
        re.compile(r"errors resolving|dns resolution failed|name resolution|domain name not found", re.I),
        "name not resolved",
    ),
    (re.compile(r"handshake failed", re.I), "TLS handshake failed"),
)
_SSL_REASON = re.compile(r"OPENSSL_internal:([A-Z0-9_]+)")
_LAST_ERROR = re.compile(
    r"failed to connect to all addresses; last error: (?:[A-Z_]+: )?(?:ipv[46]:\S+: )?(.+)"
)


def connect_failure(err: grpc.RpcError) -> str | None:
    """Why no connection could be made, in a few words; None when the error is anything else."""
    if err.code() is not grpc.StatusCode.UNAVAILABLE:
        return None
    details = err.details() or ""
    for pattern, reason in _CONNECT_FAILURES:
        if pattern.search(details):
            ssl = _SSL_REASON.search(details) if reason.startswith("TLS") else None
            return f"{reason}: {ssl.group(1)}" if ssl else reason
    last = _LAST_ERROR.search(details)
    return last.group(1)[:200] if last else None


class Link:
    """Whether a client's server has ever answered it; shared by all of the client's calls."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.answered = False


class Attempts:
    """The attempts of one request: one deadline for all, and the pause before each retry."""

    def __init__(self, options: ClientOptions, link: Link | None = None) -> None:
        now = time.monotonic()
        self.deadline = now + options.timeout
        self._connect_deadline = now + min(options.connect_timeout, options.timeout)
        self._delays = backoff_delays(options)
        self._link = link or Link(options.target)
        self.retrying = False

    def timeout(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise VaeServeError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while retrying")
        return remaining

    def succeeded(self) -> None:
        self._link.answered = True

    def retry_after(self, err: grpc.RpcError) -> float:
        """Seconds to wait before the next attempt; raises the error when it is final."""
        reason = connect_failure(err)
        if reason is None and err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            self._link.answered = True  # a status from the server, or a connection it closed
        if reason is not None and not self._link.answered:
            # Never reached: retry failing fast (no wait_for_ready), within connect_timeout only.
            delay = next(self._delays, None)
            if delay is None or time.monotonic() + delay >= self._connect_deadline:
                details = f"nothing answers at {self._link.target} ({reason})"
                raise VaeServeError(grpc.StatusCode.UNAVAILABLE, details) from None
            return delay
        delay = next(self._delays, None) if err.code() is grpc.StatusCode.UNAVAILABLE else None
        if delay is None or time.monotonic() + delay >= self.deadline:
            raise from_rpc_error(err) from None
        self.retrying = True
        return delay


def closed_client_error() -> VaeServeError:
    return VaeServeError(grpc.StatusCode.FAILED_PRECONDITION, "the client is closed")
