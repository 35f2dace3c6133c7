"""Triton's bidirectional stream (`ModelStreamInfer`) on vae-serve and on Triton itself, the same
decoder graph, the same tritonclient code, alternating rounds:

    python bench/stream_triton.py [--model-dir models/fashion-vae/2] [--rounds 2] [--duration 4]

Each stream keeps its share of the requests in flight (closed loop: an answer lets the next request
go), over 4 streams on 4 channels (1 stream for 1 in flight), batch-1 Decode. Triton is started by
the peer harness's way (bench/_triton.py; its venv built by its `setup_envs.sh`),
with its dynamic batcher (max batch 64, 2000 us window) and without; vae-serve with its defaults,
the same load on vae-serve as unary ModelInfer calls (whether a stream pays), and on vae-serve's
own `Stream` (Decode requests, as the Python client's `decode_many` sends them).
Server CPU per request is the whole process tree's, from /proc, over the measured window.
A Triton that dies during a round (its python backend can, under the batcher) is started again
for the next; that round is left out of its figures and the crashes are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from _table import markdown_table
from _triton import Triton, alive, start_triton, stop
from compare import cpu_seconds, serve

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor

REPO_ROOT = Path(__file__).resolve().parent.parent
STREAMS = 4


@dataclass
class Round:
    answers: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)


@dataclass
class _Run:
    """One measured run: a client per channel, the request's tensor, when the measured window
    opens and closes, and what was measured."""

    clients: list[triton_aio.InferenceServerClient]
    tensor: triton_aio.InferInput
    measure_from: float
    stop_at: float
    result: Round

    def record(self, sent: float, now: float) -> None:
        if sent >= self.measure_from and now <= self.stop_at:
            self.result.answers += 1
            self.result.latencies.append(now - sent)


async def _measured(
    target: str, in_flight: int, duration: float, pid: int, drive: Callable[[_Run], Awaitable[object]]
) -> Round:
    """`drive` over 4 channels (1 for one in flight) for a 1 s warm-up and `duration` s measured,
    with the server's CPU over the measured window."""
    clients = [triton_aio.InferenceServerClient(target) for _ in range(1 if in_flight == 1 else STREAMS)]
    tensor = triton_aio.InferInput("z", [1, 32], "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(0).standard_normal((1, 32), dtype=np.float32))
    began = time.perf_counter()
    run = _Run(clients, tensor, began + 1.0, began + 1.0 + duration, Round(seconds=duration))

    async def window() -> None:
        await asyncio.sleep(run.measure_from - time.perf_counter())
        before = cpu_seconds(pid)
        await asyncio.sleep(run.stop_at - time.perf_counter())
        run.result.cpu_seconds = cpu_seconds(pid) - before

    await asyncio.gather(window(), drive(run))
    for client in clients:
        await client.close()
    return run.result


class _ClosedLoop:
    """One stream's share of the requests in flight: an answer lets the next request go."""

    def __init__(self, run: _Run, share: int) -> None:
        self.run = run
        self.tokens: asyncio.Queue[None] = asyncio.Queue()
        for _ in range(share):
            self.tokens.put_nowait(None)
        self.sent: dict[str, float] = {}

    async def ids(self) -> AsyncIterator[str]:
        """The next request's id, as soon as an answer lets it go, until the window ends."""
        number = 0
        while time.perf_counter() < self.run.stop_at:
            await self.tokens.get()
            number += 1
            self.sent[str(number)] = time.perf_counter()
            yield str(number)

    def answered(self, rid: str | None) -> bool:
        """Record an answer (None: a refusal); True once the window is over and none is out."""
        now = time.perf_counter()
        start = self.sent.pop(rid, None) if rid is not None else None
        if start is not None:
            self.run.record(start, now)
        elif now >= self.run.measure_from:
            self.run.result.errors += 1
        self.tokens.put_nowait(None)
        return now > self.run.stop_at and not self.sent

    def ended(self, target: str, exc: grpc.aio.AioRpcError) -> None:
        """The stream ended: what it held is lost, and said."""
        self.run.result.errors += len(self.sent)
        print(f"{target}: stream ended: {exc.code().name}: {exc.details()}", file=sys.stderr)


async def _stream_load(target: str, model: str, in_flight: int, duration: float, pid: int) -> Round:
    """`in_flight` requests kept in flight over the streams, one stream per channel."""

    async def one_stream(run: _Run, client: triton_aio.InferenceServerClient, share: int) -> None:
        loop = _ClosedLoop(run, share)
        requests = (
            {"model_name": model, "inputs": [run.tensor], "request_id": rid} async for rid in loop.ids()
        )
        try:
            async for answer, error in client.stream_infer(requests):
                if loop.answered(answer.get_response().id if error is None else None):
                    break
        except grpc.aio.AioRpcError as exc:
            loop.ended(target, exc)

    def drive(run: _Run) -> Awaitable[object]:
        n = len(run.clients)
        shares = [in_flight // n + (i < in_flight % n) for i in range(n)]
        return asyncio.gather(*(one_stream(run, c, k) for c, k in zip(run.clients, shares, strict=True)))

    return await _measured(target, in_flight, duration, pid, drive)


async def _unary_load(target: str, model: str, in_flight: int, duration: float, pid: int) -> Round:
    """The same load as unary ModelInfer calls: `in_flight` callers over the same channels."""

    async def caller(run: _Run, client: triton_aio.InferenceServerClient) -> None:
        while (sent := time.perf_counter()) < run.stop_at:
            try:
                await client.infer(model, [run.tensor])
            except Exception:  # tritonclient wraps every RPC failure alike
                run.result.errors += sent >= run.measure_from
                continue
            run.record(sent, time.perf_counter())

    def drive(run: _Run) -> Awaitable[object]:
        return asyncio.gather(*(caller(run, run.clients[i % len(run.clients)]) for i in range(in_flight)))

    return await _measured(target, in_flight, duration, pid, drive)


async def _native_load(target: str, model: str, in_flight: int, duration: float, pid: int) -> Round:
    """The same load on vae-serve's own `Stream`, one stream per channel (`model` is unused)."""
    z = to_tensor(np.random.default_rng(0).standard_normal((1, 32), dtype=np.float32))

    async def one_stream(run: _Run, channel: grpc.aio.Channel, share: int) -> None:
        loop = _ClosedLoop(run, share)
        requests = (
            vae_pb2.StreamRequest(id=rid, decode=vae_pb2.DecodeRequest(z=z)) async for rid in loop.ids()
        )
        try:
            async for answer in vae_pb2_grpc.VAEServiceStub(channel).Stream(requests):
                if loop.answered(answer.id if answer.HasField("decode") else None):
                    break
        except grpc.aio.AioRpcError as exc:
            loop.ended(target, exc)

    async def drive(run: _Run) -> None:
        n = len(run.clients)
        shares = [in_flight // n + (i < in_flight % n) for i in range(n)]
        channels = [grpc.aio.insecure_channel(target) for _ in range(n)]
        try:
            await asyncio.gather(*(one_stream(run, c, k) for c, k in zip(channels, shares, strict=True)))
        finally:
            for channel in channels:
                await channel.close()

    return await _measured(target, in_flight, duration, pid, drive)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "fashion-vae" / "2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--in-flight", default="1,8,32")
    args = parser.parse_args()
    levels = [int(n) for n in args.in_flight.split(",")]
    with ExitStack() as stack:
        model_flags = ["--model-repository", str(args.model_dir.resolve().parent.parent)]
        pid, target = serve([*model_flags, "--model-version", args.model_dir.name], dict(os.environ), stack)
        servers = {
            "vae-serve": (pid, target, "vae_decoder", _stream_load),
            "vae-serve, unary calls": (pid, target, "vae_decoder", _unary_load),
            "vae-serve, native Stream": (pid, target, "", _native_load),
        }
        tritons: dict[str, tuple[bool, Triton]] = {}
        for batching, name in ((True, "Triton, batcher"), (False, "Triton")):
            tritons[name] = (batching, start_triton(args.model_dir, batching, stack))
        crashes = dict.fromkeys(servers | tritons, 0)
        rounds: dict[tuple[str, int], list[Round | None]] = {}  # None: the server died in that round
        for turn in range(args.rounds):
            for level in levels:
                names = [*servers, *tritons]
                for name in names if turn % 2 == 0 else reversed(names):
                    if name in servers:
                        pid, target, model, drive = servers[name]
                        rounds.setdefault((name, level), []).append(
                            asyncio.run(drive(target, model, level, args.duration, pid))
                        )
                        continue
                    batching, triton = tritons[name]
                    load = _stream_load(triton.grpc_target, "decoder", level, args.duration, triton.pid)
                    try:  # a Triton whose backend died can leave a stream unanswered
                        done: Round | None = asyncio.run(asyncio.wait_for(load, args.duration + 30))
                    except TimeoutError:
                        done = None
                    died = done is None or not alive(triton)
                    rounds.setdefault((name, level), []).append(None if died else done)
                    if died:
                        crashes[name] += 1
                        stop(triton)
                        tritons[name] = (batching, start_triton(args.model_dir, batching, stack))
    rows = []
    for level in levels:
        ours = rounds[("vae-serve", level)]
        for name in crashes:
            paired = [(o, r) for o, r in zip(ours, rounds[(name, level)], strict=True) if o and r]
            runs = [r for _, r in paired]
            if not runs:
                rows.append([level, name, "crashed in every round", "", "", "", ""])
                continue
            rate = [r.answers / r.seconds for r in runs]
            p50 = [statistics.median(r.latencies) * 1e3 for r in runs if r.latencies]
            cpu = [r.cpu_seconds / r.answers * 1e6 for r in runs if r.answers]
            ratio = [o.answers / r.answers for o, r in paired if r.answers]
            rows.append(
                [
                    level,
                    name,
                    f"{statistics.median(rate):,.0f} ({min(rate):,.0f}-{max(rate):,.0f})",
                    f"{statistics.median(p50):.2f}",
                    f"{statistics.median(cpu):,.0f}",
                    ""
                    if name == "vae-serve"
                    else f"{statistics.median(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f})",
                    sum(r.errors for r in runs),
                ]
            )
    header = [
        "in flight",
        "server",
        "req/s (range)",
        "p50 ms",
        "server CPU us/req",
        "vae-serve / it",
        "errors",
    ]
    print(markdown_table(header, rows))
    for name, count in crashes.items():
        if count:
            print(f"{name} died in {count} of its rounds (left out above) and was started again")


if __name__ == "__main__":
    main()
