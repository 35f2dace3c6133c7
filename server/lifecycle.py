"""The server's one lifecycle state, which readiness, grpc health, admission and the drain all read.

    LOADING -> SERVING -> DRAINING -> REFUSING -> STOPPED      (and LOADING -> STOPPED: start failed)

DRAINING and REFUSING are both "shutting down", but they differ for a call that starts then: while
DRAINING the transport's backlog (calls that reached the server before the drain) is still served;
once REFUSING every new call gets UNAVAILABLE (`Draining`), which clients retry elsewhere. Health
and readiness are NOT_SERVING / false from DRAINING on, so load balancers move away meanwhile.

Each transition is one method that changes the state first (synchronously: readiness and admission
follow at once) and then tells the health servicer. Going back (say DRAINING -> SERVING) raises.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2

from vae_serve.errors import Draining

from .grpc.health import HealthServicer

__all__ = ["IllegalTransition", "Lifecycle", "ServerState"]

log = logging.getLogger(__name__)


class Lifecycle(enum.Enum):
    LOADING = "loading"  # the model loads, the port is not open yet
    SERVING = "serving"  # ready: health SERVING, every call admitted
    DRAINING = "draining"  # not ready; the backlog is still served
    REFUSING = "refusing"  # not ready; new calls get UNAVAILABLE
    STOPPED = "stopped"  # the port closes (within what is left of the grace); watches have ended


_NEXT: dict[Lifecycle, frozenset[Lifecycle]] = {
    Lifecycle.LOADING: frozenset({Lifecycle.SERVING, Lifecycle.STOPPED}),
    Lifecycle.SERVING: frozenset({Lifecycle.DRAINING}),
    Lifecycle.DRAINING: frozenset({Lifecycle.REFUSING}),
    Lifecycle.REFUSING: frozenset({Lifecycle.STOPPED}),
    Lifecycle.STOPPED: frozenset(),
}

# Calls that start in these phases are answered: LOADING too, since nothing listens yet and the
# data plane can be driven directly (tests, tools) before a server exists.
_ADMITTING = frozenset({Lifecycle.LOADING, Lifecycle.SERVING, Lifecycle.DRAINING})


class IllegalTransition(RuntimeError):
    """A transition the lifecycle does not have: a bug in the caller, never a client's doing."""


class ServerState:
    """The current `Lifecycle` phase of one server, and the transitions between phases.

    `health` (with the `services` it reports on) follows the phase; without one (a bare data
    plane) only readiness and admission do."""

    def __init__(self, health: HealthServicer | None = None, services: Sequence[str] = ("",)) -> None:
        self.health = health
        self.services = tuple(services)
        self._phase = Lifecycle.LOADING

    @property
    def phase(self) -> Lifecycle:
        return self._phase

    @property
    def ready(self) -> bool:
        """What OIP ServerReady/ModelReady and grpc health report: SERVING and nothing else."""
        return self._phase is Lifecycle.SERVING

    def admit(self) -> None:
        """Raise `Draining` (UNAVAILABLE) for a call that starts while the server refuses work."""
        if self._phase not in _ADMITTING:
            raise Draining("server is shutting down; retry on another replica")

    def _move(self, to: Lifecycle) -> None:
        if to not in _NEXT[self._phase]:
            raise IllegalTransition(f"lifecycle: no transition from {self._phase.name} to {to.name}")
        log.debug("lifecycle: %s -> %s", self._phase.name, to.name)
        self._phase = to

    async def serve(self) -> None:
        """LOADING -> SERVING: the port listens; health SERVING for every service."""
        self._move(Lifecycle.SERVING)
        if self.health is not None:
            for service in self.services:
                await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        """SERVING -> DRAINING: NOT_SERVING everywhere at once (and for good), the backlog still served."""
        self._move(Lifecycle.DRAINING)
        if self.health is not None:
            await self.health.enter_graceful_shutdown()

    def refuse(self) -> None:
        """DRAINING -> REFUSING: calls that start from here on get UNAVAILABLE."""
        self._move(Lifecycle.REFUSING)

    async def stop(self) -> None:
        """REFUSING (or LOADING) -> STOPPED, just before the port closes: every health Watch ends,
        after it has said NOT_SERVING (else gRPC cancels each at the end of the grace)."""
        self._move(Lifecycle.STOPPED)
        if self.health is not None:
            await self.health.enter_graceful_shutdown()  # from LOADING it never was NOT_SERVING
            await self.health.end_watches()
