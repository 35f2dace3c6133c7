"""Graceful shutdown that answers every call received before the signal and refuses the rest.

gRPC's own `server.stop(grace)` cancels calls that reached the transport but were not yet handed
to a handler: on a busy event loop that can be most of a burst. So the drain runs in three steps:
1. keep starting calls until the server is quiet (nothing in flight, and nothing started while
   the event loop sat idle for a moment: the transport's backlog is then all answered), or for
   at most BACKLOG_MAX_S under sustained load;
2. refuse every call that starts after that with UNAVAILABLE (`Draining`), so clients retry
   elsewhere, and wait for the admitted ones to finish;
3. stop the server with whatever is left of the grace period.
Health reports NOT_SERVING from the first moment, so load balancers move away meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

__all__ = ["Activity", "drain"]

log = logging.getLogger(__name__)

IDLE_PROBE_S = 0.005  # an idle event loop hands a waiting call to its handler well within this
BACKLOG_MAX_S = 0.5  # longest step 1 lasts while calls keep coming


@dataclass
class Activity:
    """Calls in handlers now, and how many have ever started."""

    in_flight: int = 0
    started_total: int = 0
    refusing: bool = False

    def started(self) -> None:
        self.in_flight += 1
        self.started_total += 1

    def finished(self) -> None:
        self.in_flight -= 1


async def drain(server: grpc.aio.Server, activity: Activity, grace: float) -> None:
    began = time.monotonic()
    deadline = began + grace
    while time.monotonic() < min(deadline, began + BACKLOG_MAX_S):  # 1. the backlog
        seen = activity.started_total
        await asyncio.sleep(IDLE_PROBE_S)
        if activity.started_total == seen and activity.in_flight == 0:
            break
    activity.refusing = True  # 2. new calls get UNAVAILABLE from here on
    backlog_s = time.monotonic() - began
    while activity.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(IDLE_PROBE_S)
    log.info("drain: backlog answered in %.3f s, admitted calls finished in %.3f s, %d still in flight",
             backlog_s, time.monotonic() - began - backlog_s, activity.in_flight)  # fmt: skip
    await server.stop(max(0.0, deadline - time.monotonic()))  # 3.
