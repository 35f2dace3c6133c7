"""Graceful shutdown that loses no request the server has already received.

gRPC's own `server.stop(grace)` cancels calls that reached the transport but were not yet
handed to a handler, which on a busy event loop can be most of a burst. So the drain first keeps
serving, with health NOT_SERVING so load balancers move away, until the server has been quiet
(nothing in flight, nothing started) for a moment or half the grace period is gone; only then
does it stop, giving what is still in flight the rest of the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

__all__ = ["Activity", "drain"]

log = logging.getLogger(__name__)

QUIET_S = 0.1  # a free event loop hands queued calls to handlers well within this


@dataclass
class Activity:
    """RPCs in handlers now, and when the last one started (monotonic seconds)."""

    in_flight: int = 0
    last_start: float = field(default_factory=time.monotonic)

    def started(self) -> None:
        self.in_flight += 1
        self.last_start = time.monotonic()

    def finished(self) -> None:
        self.in_flight -= 1

    def quiet_for(self, seconds: float) -> bool:
        return self.in_flight == 0 and time.monotonic() - self.last_start >= seconds


async def drain(server: grpc.aio.Server, activity: Activity, grace: float) -> None:
    began = time.monotonic()
    deadline = began + grace
    while time.monotonic() < began + grace / 2 and not activity.quiet_for(QUIET_S):
        await asyncio.sleep(0.01)
    log.info("drain: served %.2f s after NOT_SERVING; stopping with %d RPCs in flight",
             time.monotonic() - began, activity.in_flight)  # fmt: skip
    await server.stop(max(0.0, deadline - time.monotonic()))
