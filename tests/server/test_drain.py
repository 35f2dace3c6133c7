"""Draining: NOT_SERVING at once, every received RPC answered, then the port closes within the grace."""

import asyncio
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import RunningServer

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor


def test_drain_answers_the_burst_then_refuses():
    running = RunningServer(drain_grace_s=8.0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            z = to_tensor(np.random.default_rng(0).standard_normal((256, 32), dtype=np.float32))
            calls = [stub.Decode.future(vae_pb2.DecodeRequest(z=z), timeout=30) for _ in range(15)]
            time.sleep(0.05)  # the burst is on the wire: received before the drain begins
            began = time.monotonic()
            stopping = asyncio.run_coroutine_threadsafe(running.server.stop(), running.loop)
            status = health.Check(
                health_pb2.HealthCheckRequest(service="vae.v1.VAEService"), timeout=5
            ).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert all(call.result().x.shape == [256, 784] for call in calls)
            stopping.result(timeout=10)
            assert time.monotonic() - began < 8.0
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        running.loop.call_soon_threadsafe(running.loop.stop)


def test_calls_starting_after_the_backlog_are_refused_with_unavailable(running, stub):
    activity = running.server.dataplane.activity
    activity.refusing = True  # where drain() puts the server once the backlog is answered
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in caught.value.details()
        assert not running.server.dataplane.ready
    finally:
        activity.refusing = False
    assert stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5).name == "fashion-vae"
