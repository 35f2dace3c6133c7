"""What both HTTP APIs (KServe v2 and `/v1`) read of a call besides its body: the caller's
deadline; and how big a body is before its parse and reply move off the event loop."""

from __future__ import annotations

import time

from starlette.requests import Request

from vae_serve.errors import InvalidInput

from .limits import is_count

__all__ = ["MAX_TIMEOUT_MS", "OFF_LOOP_BYTES", "TIMEOUT_HEADER", "deadline_from"]

OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are parsed, and replies built, on a thread
TIMEOUT_HEADER = "x-timeout-ms"  # the caller's deadline, as gRPC's grpc-timeout gives it there
MAX_TIMEOUT_MS = 3_600_000


def deadline_from(request: Request, timeout_s: float | None = None) -> float | None:
    """The call's deadline in time.monotonic() seconds: `X-Timeout-Ms` or Triton's `timeout`
    parameter, the sooner of the two; None when the caller set neither."""
    header = request.headers.get(TIMEOUT_HEADER)
    if header is not None:
        if not is_count(header) or not 0 < int(header) <= MAX_TIMEOUT_MS:
            raise InvalidInput(f"{TIMEOUT_HEADER}: a whole number of milliseconds, 1 to {MAX_TIMEOUT_MS}")
        timeout_s = min(int(header) / 1e3, timeout_s or float("inf"))
    return None if timeout_s is None else time.monotonic() + timeout_s
