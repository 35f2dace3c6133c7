"""`grpc.health.v1` whose `Watch` streams end when the server stops.

grpc-health-checking's asyncio servicer keeps every `Watch` open until gRPC cancels it at the end
of the grace period (a traceback per stream in the log), and when one watch ends it drops the
condition its siblings wait on, so they miss later changes (NOT_SERVING at shutdown among them).
Here each watch waits on the one condition of its service for as long as the server runs, and
`end_watches` closes them all with UNAVAILABLE once NOT_SERVING has been sent. The servicer's
state is read through grpc_internals.py (`HealthBase`).
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2

from .grpc_internals import HealthBase

__all__ = ["HealthServicer"]


class HealthServicer(HealthBase):
    def __init__(self) -> None:
        super().__init__()
        self._ended = False

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        condition = self.changes(request.service)  # never removed: siblings share it
        last = None
        async with condition:
            while not self._ended:
                status = self.status(request.service)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                await condition.wait()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")

    async def end_watches(self) -> None:
        """End every Watch (after NOT_SERVING was set, so each has said so first)."""
        self._ended = True
        for condition in self.all_changes():
            async with condition:
                condition.notify_all()
        await asyncio.sleep(0)
