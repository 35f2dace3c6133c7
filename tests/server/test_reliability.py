"""Bad days, each bounded in count and time: overload, deadlines shorter than the queue, a soak."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import DEFAULT_VERSION, RunningServer, free_port, start_vae_serve, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor

L = 32


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


async def hammer(
    target: str, concurrency: int, seconds: float, request: bytes, path: str, timeout: float = 5
):
    """Closed-loop load; returns (status code, latency) of every call."""
    results: list[tuple[grpc.StatusCode, float]] = []
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    calls = [ch.unary_unary(path) for ch in channels]
    stop_at = time.monotonic() + seconds

    async def worker(i: int) -> None:
        while time.monotonic() < stop_at:
            began = time.monotonic()
            try:
                await calls[i % len(calls)](request, timeout=timeout)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            results.append((code, time.monotonic() - began))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for ch in channels:
        await ch.close()
    return results


DECODE_1 = vae_pb2.DecodeRequest(z=to_tensor(np.zeros((1, L), np.float32))).SerializeToString()


def p99(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99)) if latencies else 0.0


DECODE_32 = vae_pb2.DecodeRequest(z=to_tensor(np.zeros((32, L), np.float32))).SerializeToString()


@pytest.mark.slow
@pytest.mark.timing
def test_overload_is_shed_quickly_admitted_work_stays_fast_and_the_server_recovers():
    # 400 callers of 32 rows each against a queue that holds 256 rows: over 10x what it admits.
    flags = ["--max-queue-rows", "256", "--max-batch-size", "128", "--max-request-rows", "64"]
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0", *flags)
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(hammer(target, 8, 0.5, DECODE_32, "/vae.v1.VAEService/Decode"))  # warm up first
        rss_before = rss_mb(proc.pid)
        results = asyncio.run(hammer(target, 400, 1.5, DECODE_32, "/vae.v1.VAEService/Decode"))
        codes = Counter(code for code, _ in results)
        print(f"overload: {dict((c.name, n) for c, n in codes.items())}")
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        # The queue filled and what came beyond it was shed. (How much is shed measures how fast
        # this process's callers retry against the server, a share of the machine, not the server.)
        assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0, codes
        shed = [t for code, t in results if code is grpc.StatusCode.RESOURCE_EXHAUSTED]
        admitted = [t for code, t in results if code is grpc.StatusCode.OK]
        # Bounded by the queue, not by the offered load (seconds of it without shedding); 2 s leaves
        # room for a loaded 2-core machine, where 0.5-1.8 s was seen.
        assert p99(admitted) < 2.0, p99(admitted)
        assert p99(shed) < 2.0, p99(shed)
        print(f"overload: p99 admitted {p99(admitted) * 1e3:.0f} ms, shed {p99(shed) * 1e3:.0f} ms")
        growth = rss_mb(proc.pid) - rss_before
        print(f"overload: RSS growth {growth:.1f} MB")
        assert growth < 100  # memory bounded: the queue bound holds, nothing piles up
        # Load drops: everything is served again, promptly.
        after = asyncio.run(hammer(target, 4, 0.5, DECODE_1, "/vae.v1.VAEService/Decode"))
        assert {code for code, _ in after} == {grpc.StatusCode.OK}
        assert p99([t for _, t in after]) < 0.1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # it drained and exited cleanly after all that


DECODER = {"model": "fashion-vae", "graph": "decoder"}


def test_deadline_shorter_than_queue_time_is_dropped_not_computed():
    server = RunningServer(queue_delay_policy="fixed", max_queue_delay_us=1_000_000, max_batch_size=64)
    registry = server.server.metrics.registry

    def computed() -> float:
        return (
            registry.get_sample_value(
                "vae_serve_batch_size_rows_count", {**DECODER, "version": DEFAULT_VERSION}
            )
            or 0.0
        )

    def queued() -> float:
        return registry.get_sample_value("vae_serve_queue_rows", DECODER) or 0.0

    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            before = computed()
            # Half a second to live, queued for a batch that waits a second for company.
            call = stub.Decode.future(vae_pb2.DecodeRequest.FromString(DECODE_1), timeout=0.5)
            wait_for(lambda: queued() == 1, "the call in the queue")
            with pytest.raises(grpc.RpcError) as caught:
                call.result()
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            wait_for(lambda: queued() == 0, "an empty queue")  # the batcher took it
            assert computed() == before  # the expired request never reached ONNX Runtime
            reply = stub.Decode(vae_pb2.DecodeRequest.FromString(DECODE_1), timeout=5)
            assert reply.x.shape == [1, 784] and computed() == before + 1
    finally:
        server.stop()


@pytest.mark.slow
def test_soak_mixed_rpcs_without_errors_or_memory_growth(give_way):
    seconds = float(os.environ.get("VAE_SOAK_S", "12"))  # longer: VAE_SOAK_S=600 (docs/development.md)
    rounds = max(2, round(seconds / 10))  # between rounds, a timed test of another worker may run
    proc, port = start_vae_serve("--port", str(free_port()), "--metrics-port", "0")
    target = f"127.0.0.1:{port}"
    x = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    mixed = [
        ("/vae.v1.VAEService/Encode", vae_pb2.EncodeRequest(x=to_tensor(x)).SerializeToString()),
        ("/vae.v1.VAEService/Decode", DECODE_1),
        ("/vae.v1.VAEService/Sample", vae_pb2.SampleRequest(num_samples=16, decode=True).SerializeToString()),
        ("/vae.v1.VAEService/GetModelInfo", b""),
    ]
    try:
        warm = asyncio.run(hammer(target, 8, 3.0, mixed[0][1], mixed[0][0]))
        assert {c for c, _ in warm} == {grpc.StatusCode.OK}
        rss_start = rss_mb(proc.pid)

        async def one_round() -> list:
            runs = [hammer(target, 4, seconds / rounds, request, path) for path, request in mixed]
            return [item for run in await asyncio.gather(*runs) for item in run]

        results = []
        for _ in range(rounds):
            results += asyncio.run(one_round())
            give_way()
        codes = Counter(code for code, _ in results)
        assert set(codes) == {grpc.StatusCode.OK}, codes
        growth = rss_mb(proc.pid) - rss_start
        print(f"soak: {len(results)} calls in {seconds:.0f} s, RSS growth {growth:.1f} MB")
        assert growth < 50
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
