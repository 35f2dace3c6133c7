"""Admission of calls, and a graceful shutdown that answers every call that reached the server.

`Activity` counts the calls in handlers and admits data-plane work (Encode, Decode, Sample,
ModelInfer) up to `--max-concurrent-rpcs`: control calls (model info, readiness, health,
reflection) never take a slot, so a client holding many cannot lock anyone out of them.

gRPC's own `server.stop(grace)` cancels calls that reached the transport but were not yet handed
to a handler: on a busy event loop that can be most of a burst (while serving, gRPC would also
cancel those past its limit of 1000 waiting, which app.py lifts). So the drain runs in three steps:
1. keep serving until the server is quiet (nothing in flight, and nothing started while the
   event loop sat idle for QUIET_S: the transport's backlog is then all answered), for at most
   BACKLOG_MAX_S while calls keep coming;
2. refuse every call that starts after that with UNAVAILABLE (`Draining`, which clients retry
   elsewhere), and keep refusing until no call has come for REFUSED_QUIET_S, within the grace
   period: the rest of a burst of any size is refused, never cancelled. A backlog cannot be
   told from callers that ignore health and keep sending (both arrive at the pace of the
   senders), so under such load the drain refuses until the grace period ends;
3. stop the server with whatever is left of the grace period.
Health reports NOT_SERVING from the first moment, so load balancers move away meanwhile. The
steps are the lifecycle's DRAINING, REFUSING and STOPPED (server/lifecycle.py): admission here and
in the data plane reads that one state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from vae_serve.errors import Overloaded

from .grpc.registration import ReceiveTimeout
from .lifecycle import Lifecycle, ServerState

__all__ = ["Activity", "drain"]

log = logging.getLogger(__name__)

QUIET_S = 0.02  # an idle event loop hands a waiting call to its handler well within this
BACKLOG_MAX_S = 0.5  # longest step 1 lasts while calls keep coming
REFUSED_QUIET_S = 0.1  # while refusing: no call for this long, and the callers have all gone


@dataclass
class Activity:
    """Calls in handlers now, how many have ever started, and the admission of data-plane work."""

    max_working: int = 2048
    state: ServerState = field(default_factory=ServerState)  # refuses work from REFUSING on
    in_flight: int = 0
    working: int = 0  # data-plane calls among those in flight
    started_total: int = 0

    def started(self) -> None:
        self.in_flight += 1
        self.started_total += 1

    def finished(self) -> None:
        self.in_flight -= 1

    def admit(self) -> None:
        """Take a data-plane slot (give it back with `release`), or raise why not."""
        self.state.admit()
        if self.working >= self.max_working:
            raise Overloaded(
                f"{self.working} requests in progress, the limit (--max-concurrent-rpcs); retry with backoff"
            )
        self.working += 1

    def release(self) -> None:
        self.working -= 1


async def _until_quiet(activity: Activity, receiving: ReceiveTimeout, until: float, window: float) -> bool:
    """Wait until no call is in a handler or waiting for its message, and none arrived for `window`
    seconds; False if `until` came first."""
    while time.monotonic() < until:
        seen = (activity.started_total, receiving.arrived)
        await asyncio.sleep(window)
        idle = activity.in_flight == 0 and receiving.waiting == 0
        if idle and (activity.started_total, receiving.arrived) == seen:
            return True
    return False


async def drain(
    server: grpc.aio.Server,
    activity: Activity,
    receiving: ReceiveTimeout,
    grace: float,
) -> None:
    """From DRAINING (the caller's `state.drain()`) to STOPPED; from REFUSING (the backlog was
    already given its time) it goes straight to step 2."""
    state = activity.state
    began = time.monotonic()
    deadline = began + grace
    if state.phase is Lifecycle.DRAINING:
        await _until_quiet(activity, receiving, min(deadline, began + BACKLOG_MAX_S), QUIET_S)  # 1. backlog
        state.refuse()  # 2. new calls get UNAVAILABLE from here on
    backlog_s = time.monotonic() - began
    refused_from = activity.started_total
    settled = await _until_quiet(activity, receiving, deadline, REFUSED_QUIET_S)
    log.info(
        "drain: served for %.3f s, then refused %d calls in %.3f s; %s",
        backlog_s,
        activity.started_total - refused_from,
        time.monotonic() - began - backlog_s,
        "settled" if settled else f"grace over with {activity.in_flight} in flight",
    )
    await state.stop()  # health watches end here, not cancelled by gRPC at the end of the grace
    await server.stop(max(0.0, deadline - time.monotonic()))  # 3.
