"""A gRPC load generator: closed loop at a concurrency, or open loop with Poisson arrivals.

    python bench/loadgen.py --target 127.0.0.1:50051 --method Decode --rows 1 --concurrency 32
    python bench/loadgen.py --target 127.0.0.1:50051 --method Decode --rate 800 --duration 10

Requests are serialized once and sent as raw bytes over several grpc.aio channels, one HTTP/2
connection each (each channel has its own subchannel pool: by default gRPC lets every channel to
one target share a single connection, which would also send all the load to one `--workers`
process), and replies are not parsed, so the generator spends its CPU on the transport
only: the same load costs the same whether it hits vae-serve or the echo floor. `--processes N`
splits the load over N processes (on this 2-core machine, 1 is usually best).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.tensor import to_tensor

__all__ = ["LoadResult", "LoadSpec", "payload", "run_load"]


@dataclass(frozen=True)
class LoadSpec:
    target: str
    method: str = (
        "Decode"  # Encode | Decode, or a full path such as /inference.GRPCInferenceService/ModelInfer
    )
    rows: int = 1
    concurrency: int = 32  # closed loop: requests kept in flight
    rate: float = 0.0  # open loop: mean arrivals per second (Poisson); 0 = closed loop
    duration: float = 5.0
    warmup: float = 1.0
    channels: int = 4
    timeout: float = 10.0
    processes: int = 1
    request: bytes = b""  # serialized request; built from method and rows when empty


@dataclass
class LoadResult:
    requests: int = 0  # successful calls measured; throughput counts these only
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "throughput": round(self.throughput, 1),
            "p50_ms": self.percentile(50) * 1e3,
            "p95_ms": self.percentile(95) * 1e3,
            "p99_ms": self.percentile(99) * 1e3,
            "max_ms": max(self.latencies, default=0) * 1e3,
            "errors": self.errors,
        }

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.seconds = max(self.seconds, other.seconds)
        self.errors = dict(Counter(self.errors) + Counter(other.errors))
        self.latencies += other.latencies


def payload(method: str, rows: int, input_dim: int = 784, latent_dim: int = 32) -> bytes:
    """A serialized native request of `rows` rows with realistic values."""
    rng = np.random.default_rng(0)
    if method == "Encode":
        return vae_pb2.EncodeRequest(
            x=to_tensor(rng.random((rows, input_dim), dtype=np.float32))
        ).SerializeToString()
    if method == "Decode":
        z = rng.standard_normal((rows, latent_dim), dtype=np.float32)
        return vae_pb2.DecodeRequest(z=to_tensor(z)).SerializeToString()
    raise ValueError(f"no built-in payload for {method}; pass LoadSpec.request")


def _path(method: str) -> str:
    return method if method.startswith("/") else f"/vae.v1.VAEService/{method}"


async def _sleep_until(moment: float) -> None:
    """Arrivals keep their absolute schedule; asyncio's ~1 ms timer grain groups those due within
    the same millisecond. Spinning to be exact would take the CPU the server under test needs
    (measured: p99 at 50% load doubled), so the grain is accepted."""
    if (left := moment - time.perf_counter()) > 0:
        await asyncio.sleep(left)


class _Run:
    """One load run's calls and bookkeeping: successes, errors by code, latencies."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.request = spec.request or payload(spec.method, spec.rows)
        options = [
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own
        ]
        self.channels = [grpc.aio.insecure_channel(spec.target, options) for _ in range(spec.channels)]
        self.calls = [ch.unary_unary(_path(spec.method)) for ch in self.channels]  # bytes in, bytes out
        self.result, self.errors = LoadResult(), Counter()
        began = time.perf_counter()
        self.measure_from, self.stop_at = began + spec.warmup, began + spec.warmup + spec.duration

    async def call(self, i: int, count_if_sent_in_window: bool) -> None:
        sent = time.perf_counter()
        code = "OK"
        try:
            await self.calls[i % len(self.calls)](self.request, timeout=self.spec.timeout)
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        done = time.perf_counter()
        counted = self.measure_from <= sent and (count_if_sent_in_window or done <= self.stop_at)
        if counted and code == "OK":
            self.result.requests += 1
            self.result.latencies.append(done - sent)
        elif counted:
            self.errors[code] += 1

    async def closed_loop(self) -> None:
        async def worker(i: int) -> None:
            while time.perf_counter() < self.stop_at:
                await self.call(i, count_if_sent_in_window=False)

        await asyncio.gather(*(worker(i) for i in range(self.spec.concurrency)))

    async def open_loop(self) -> None:
        """Poisson arrivals; a call sent in the window counts however late it ends."""
        rng, tasks, i = random.Random(1), set(), 0
        next_at = time.perf_counter()
        while next_at < self.stop_at:
            await _sleep_until(next_at)
            task = asyncio.create_task(self.call(i, count_if_sent_in_window=True))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += rng.expovariate(self.spec.rate)
            i += 1
        await asyncio.gather(*tasks)

    async def finish(self) -> LoadResult:
        for ch in self.channels:
            await ch.close()
        self.result.seconds = self.spec.duration
        self.result.errors = dict(self.errors)
        return self.result


async def _drive(spec: LoadSpec) -> LoadResult:
    run = _Run(spec)
    await (run.open_loop() if spec.rate > 0 else run.closed_loop())
    return await run.finish()


def _in_process(spec: LoadSpec) -> LoadResult:
    return asyncio.run(_drive(spec))


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load, split over spec.processes processes, and merge what they measured."""
    if spec.processes <= 1:
        return _in_process(spec)
    share = LoadSpec(
        **{
            **asdict(spec),
            "processes": 1,
            "rate": spec.rate / spec.processes,
            "concurrency": max(1, spec.concurrency // spec.processes),
        }
    )
    with multiprocessing.get_context("spawn").Pool(spec.processes) as pool:
        parts = pool.map(_in_process, [share] * spec.processes)
    total = LoadResult()
    for part in parts:
        total.merge(part)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", default="Decode")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="Poisson arrivals per second (open loop)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    a = parser.parse_args()
    spec = LoadSpec(
        a.target,
        a.method,
        a.rows,
        a.concurrency,
        a.rate,
        a.duration,
        a.warmup,
        a.channels,
        processes=a.processes,
    )
    print(json.dumps(run_load(spec).summary(), indent=2))


if __name__ == "__main__":
    main()
