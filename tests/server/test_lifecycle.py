"""The one lifecycle: its transitions, and readiness, health and admission following each phase."""

import asyncio
import gc

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import RunningServer

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.errors import Draining
from vae_serve.server.drain import Activity
from vae_serve.server.grpc.health import HealthServicer
from vae_serve.server.lifecycle import IllegalTransition, Lifecycle, ServerState

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Aborted(Exception):
    pass


class _Context:
    """Enough of a ServicerContext for HealthServicer.Check."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code)


async def _health(servicer: HealthServicer, service: str) -> int | None:
    """The service's health status; None for one never set (Check answers NOT_FOUND)."""
    try:
        reply = await servicer.Check(health_pb2.HealthCheckRequest(service=service), _Context())
    except _Aborted:
        return None
    return reply.status


def _admits(activity: Activity) -> bool:
    try:
        activity.admit()
    except Draining:
        return False
    activity.release()
    return True


def test_each_phase_sets_readiness_health_and_admission_in_order():
    async def walk() -> list[tuple[Lifecycle, bool, int | None, bool]]:
        health = HealthServicer()
        state = ServerState(health, ("", "svc"))
        activity = Activity(4, state)

        async def seen() -> tuple[Lifecycle, bool, int | None, bool]:
            return state.phase, state.ready, await _health(health, "svc"), _admits(activity)

        phases = [await seen()]
        await state.serve()
        phases.append(await seen())
        await state.drain()
        phases.append(await seen())
        state.refuse()
        phases.append(await seen())
        await state.stop()
        phases.append((state.phase, state.ready, await _health(health, ""), _admits(activity)))
        return phases

    assert asyncio.run(walk()) == [
        (Lifecycle.LOADING, False, None, True),  # nothing listens yet: a bare data plane works
        (Lifecycle.SERVING, True, SERVING, True),
        (Lifecycle.DRAINING, False, NOT_SERVING, True),  # the backlog is still served
        (Lifecycle.REFUSING, False, NOT_SERVING, False),
        (Lifecycle.STOPPED, False, NOT_SERVING, False),
    ]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], "drain"),  # LOADING -> DRAINING
        ([], "refuse"),
        (["serve"], "serve"),  # twice
        (["serve"], "refuse"),  # skips the backlog
        (["serve"], "stop"),  # skips the drain
        (["serve", "drain"], "serve"),  # back to SERVING
        (["serve", "drain"], "stop"),
        (["serve", "drain", "refuse"], "drain"),
        (["serve", "drain", "refuse", "stop"], "stop"),
        (["stop"], "serve"),  # a server that failed to start never serves
    ],
)
def test_an_illegal_transition_raises_and_leaves_the_phase(path, illegal):
    async def step(state: ServerState, name: str) -> None:
        result = getattr(state, name)()  # refuse() is plain, the others tell health and are awaited
        if asyncio.iscoroutine(result):
            await result

    async def run() -> None:
        state = ServerState(HealthServicer(), ("",))
        for name in path:
            await step(state, name)
        before = state.phase
        with pytest.raises(IllegalTransition, match=f"from {before.name} to"):
            await step(state, illegal)
        assert state.phase is before

    asyncio.run(run())


def test_a_served_server_follows_its_lifecycle_on_the_wire():
    """OIP readiness, grpc health and admission of both front ends read the one state."""
    running = RunningServer()
    state = running.server.state
    try:
        with grpc.insecure_channel(running.target) as channel:
            native = vae_pb2_grpc.VAEServiceStub(channel)
            infer = oip_grpc.GRPCInferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            def observed() -> tuple[bool, bool, int, str]:
                ready = infer.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
                model_ready = infer.ModelReady(oip.ModelReadyRequest(name="vae_encoder"), timeout=5).ready
                status = health.Check(health_pb2.HealthCheckRequest(service="vae.v1.VAEService"), timeout=5)
                try:
                    native.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5)
                    admitted = "OK"
                except grpc.RpcError as err:
                    admitted = err.code().name
                assert infer.ServerLive(oip.ServerLiveRequest(), timeout=5).live  # live throughout
                return ready, model_ready, status.status, admitted

            assert state.phase is Lifecycle.SERVING
            assert observed() == (True, True, SERVING, "OK")
            running.call(state.drain())
            assert observed() == (False, False, NOT_SERVING, "OK")
            state.refuse()
            assert observed() == (False, False, NOT_SERVING, "UNAVAILABLE")
    finally:
        running.stop()  # the drain goes on from REFUSING to STOPPED
    assert state.phase is Lifecycle.STOPPED


def test_start_up_objects_are_frozen_out_of_the_collectors_scans():
    """A full collection over start-up's ~80k objects took ~20 ms, a stall that landed on a call;
    frozen, they are never scanned again (what the Poisson tail in bench/compare.py --rate shows)."""
    gc.unfreeze()  # whatever an earlier test's server froze
    server = RunningServer()
    try:
        assert gc.get_freeze_count() > 10_000
    finally:
        server.stop()
        gc.unfreeze()
