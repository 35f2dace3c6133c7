"""Draining: NOT_SERVING at once, every received RPC answered, then the port closes within the grace."""

import asyncio
import signal
from collections import Counter

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import PATIENCE_S, RunningServer, start_vae_serve, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor


def test_drain_answers_the_burst_then_refuses():
    # A grace far beyond the test's patience: a drain that waited it out, instead of ending once
    # the burst is answered, would not finish in time.
    running = RunningServer(drain_grace_s=3600.0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            z = to_tensor(np.random.default_rng(0).standard_normal((256, 32), dtype=np.float32))
            activity = running.server.dataplane.activity
            before = activity.started_total
            calls = [stub.Decode.future(vae_pb2.DecodeRequest(z=z), timeout=30) for _ in range(15)]
            wait_for(lambda: activity.started_total - before == 15, "the burst received")
            stopping = asyncio.run_coroutine_threadsafe(running.server.stop(), running.loop)
            status = health.Check(
                health_pb2.HealthCheckRequest(service="vae.v1.VAEService"), timeout=5
            ).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert all(call.result().x.shape == [256, 784] for call in calls)
            stopping.result(timeout=PATIENCE_S)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        running.loop.call_soon_threadsafe(running.loop.stop)


def test_calls_starting_after_the_backlog_are_refused_with_unavailable():
    running = RunningServer()
    state = running.server.state
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            running.call(state.drain())
            assert stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5).name == "fashion-vae"
            state.refuse()  # where drain() puts the server once the backlog is answered
            for call in (stub.GetModelInfo, stub.Decode):  # control and data-plane calls alike
                request = (
                    vae_pb2.GetModelInfoRequest() if call is stub.GetModelInfo else vae_pb2.DecodeRequest()
                )
                with pytest.raises(grpc.RpcError) as caught:
                    call(request, timeout=5)
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in caught.value.details()
            assert not running.server.dataplane.ready
    finally:
        running.stop()


async def _burst_then_sigterm(calls: int, send, prepare=None) -> Counter:
    """`calls` Decodes on the wire, then SIGTERM while the server works through them; the final
    status of each."""
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0", "--drain-grace-s", "20")
    try:
        if prepare is not None:
            await prepare(f"127.0.0.1:{port}")
        outcomes = [asyncio.ensure_future(send(f"127.0.0.1:{port}", i)) for i in range(calls)]
        assert await outcomes[0] == "OK"  # the burst is on the wire and being served
        proc.send_signal(signal.SIGTERM)
        codes = Counter(await asyncio.gather(*outcomes))
        assert await asyncio.to_thread(proc.wait, 30) == 0
        return codes
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("calls", [1500, 3000])
def test_sigterm_during_a_burst_answers_or_refuses_every_call_never_cancels(calls):
    z = vae_pb2.DecodeRequest(z=to_tensor(np.zeros((1, 32), np.float32))).SerializeToString()

    async def run() -> Counter:
        channels: dict[str, list[grpc.aio.Channel]] = {}

        async def prepare(target: str) -> None:  # the burst starts on connected channels
            channels[target] = [grpc.aio.insecure_channel(target) for _ in range(8)]
            await asyncio.gather(*(channel.channel_ready() for channel in channels[target]))

        async def send(target: str, i: int) -> str:
            try:
                await channels[target][i % 8].unary_unary("/vae.v1.VAEService/Decode")(z, timeout=30)
            except grpc.aio.AioRpcError as err:
                return err.code().name
            return "OK"

        try:
            return await _burst_then_sigterm(calls, send, prepare)
        finally:
            for pool in channels.values():
                for channel in pool:
                    await channel.close()

    codes = asyncio.run(run())
    print(f"burst of {calls} then SIGTERM: {dict(codes)}")
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["OK"] > 0


@pytest.mark.slow
def test_the_async_client_sees_no_cancelled_call_in_a_drain():
    from vae_serve.client import AsyncVaeClient, VaeServeError

    async def run() -> Counter:
        clients: dict[str, AsyncVaeClient] = {}

        async def prepare(target: str) -> None:
            clients[target] = AsyncVaeClient(target, retries=0, timeout=30)
            await clients[target].model_info()  # cached: the burst is Decodes only

        async def send(target: str, _i: int) -> str:
            try:
                await clients[target].decode(np.zeros((1, 32), np.float32))
            except VaeServeError as err:
                return err.code.name
            return "OK"

        try:
            return await _burst_then_sigterm(1500, send, prepare)
        finally:
            for client in clients.values():
                await client.close()

    codes = asyncio.run(run())
    print(f"AsyncVaeClient, burst of 1500 then SIGTERM: {dict(codes)}")
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["OK"] > 0


async def _burst_over_connections(port: int, calls: int, connections: int, during=None) -> Counter:
    """`calls` one-row Decodes spread over `connections` TCP connections (channels with their own
    subchannel pool: channels otherwise share one connection); `during` runs once they are issued.
    The final status of each."""
    request = vae_pb2.DecodeRequest(z=to_tensor(np.zeros((1, 32), np.float32))).SerializeToString()
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(connections)]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        decodes = [channel.unary_unary("/vae.v1.VAEService/Decode") for channel in channels]

        async def send(i: int) -> str:
            try:
                await decodes[i % connections](request, timeout=30)
            except grpc.aio.AioRpcError as err:
                return err.code().name
            return "OK"

        outcomes = [asyncio.ensure_future(send(i)) for i in range(calls)]
        if during is not None:
            await during()
        return Counter(await asyncio.gather(*outcomes))
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.slow
def test_a_burst_over_several_connections_is_answered_whole():
    """Over several connections a burst piles up more received calls than gRPC lets wait for a
    handler by default; none of them is cancelled, each is answered."""
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0")
    try:
        codes = asyncio.run(_burst_over_connections(port, 2000, 4))
    finally:
        proc.kill()
        proc.wait()
    print(f"burst of 2000 over 4 connections: {dict(codes)}")
    assert codes == Counter(OK=2000), codes


@pytest.mark.slow
def test_sigterm_just_after_a_burst_over_several_connections_answers_or_refuses_every_call():
    # A grace far beyond the test's patience: it exits once every call is answered or refused, not
    # when the grace runs out.
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0", "--drain-grace-s", "3600")

    async def sigterm() -> None:
        await asyncio.sleep(0.05)  # the caller's timing, not synchronisation: SIGTERM 50 ms into the burst
        proc.send_signal(signal.SIGTERM)

    try:
        codes = asyncio.run(_burst_over_connections(port, 2000, 4, during=sigterm))
        assert proc.wait(PATIENCE_S) == 0
    finally:
        proc.kill()
        proc.wait()
    print(f"burst of 2000 over 4 connections, SIGTERM after 50 ms: {dict(codes)}")
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["OK"] > 0 and codes.total() == 2000
