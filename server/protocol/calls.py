"""What every front end needs of a call, owned by none of them: its deadline, the model it names
and the version it pins, and its request id (a contextvar, so every log line inside the call can
carry it)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import grpc
from opentelemetry.trace import format_span_id, format_trace_id, get_current_span

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestIdFilter",
    "deadline_of",
    "named_model",
    "pinned_version",
    "request_id",
    "request_id_from",
]

REQUEST_ID_HEADER = "x-request-id"
NO_REQUEST = "-"  # what log lines outside any call show

request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)

# A caller's id is echoed into our logs and replies: short and plain, or we make our own.
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline in time.monotonic() seconds, None when the caller set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def named_model(model: str) -> str | None:
    """The model a native request names: proto3 sends "" for none, which means the default model."""
    return model or None


def pinned_version(version: str) -> str | None:
    """The model version a request pins: proto3 sends "" for none, which means the latest."""
    return version or None


def request_id_from(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's `x-request-id` when it sent a plain one (at most 128 of [A-Za-z0-9._:-]),
    else a fresh uuid4 hex. Only the first such header counts."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            if isinstance(value, str) and _VALID_ID.fullmatch(value):
                return value
            break
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (the current call's, or "-"), for `%(request_id)s`; and
    inside a traced call `trace_id` and `span_id` (which JSON lines carry)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        span = get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id, record.span_id = format_trace_id(span.trace_id), format_span_id(span.span_id)
        return True
