"""What bursts of large requests do to the server's memory, per allocator setting.

    python bench/memory.py [--bursts 5] [--concurrency 16] [--rows 8000] [--variants glibc,jemalloc]

Each variant starts its own `vae-serve` (python -m vae_serve.server.cli) with its environment and
flags, sends `--bursts` bursts of `--concurrency` concurrent Encode requests of `--rows` x 784
float32 (8000 rows: 25 MB each), and reads the server's RSS from /proc: before, after each burst,
the peak (sampled every 10 ms), and once more after `--settle-s` idle. "MB/in-flight" is
(peak - start) / concurrency: what one concurrent large request costs at the peak. "no trim"
variants switch off the runner's malloc_trim (runner.TRIM_AFTER_BYTES = 0). The queue is
sized to admit every request (`--max-queue-rows`), so all of them are in flight at once; the
"default-queue" variant keeps the default bound and shows what shedding leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from _table import markdown_table
from _test_support import start_server

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.tensor import to_tensor

ROOT = Path(__file__).resolve().parent.parent
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
MiB = 1 << 20

# The server as `vae-serve` runs it, or with the runner's malloc_trim switched off.
SERVE = ["-m", "vae_serve.server.cli"]
NO_TRIM = [
    "-c",
    "import sys, vae_serve.server.runners.runner as r; r.TRIM_AFTER_BYTES = 0; "
    "from vae_serve.server.cli import main; sys.exit(main(sys.argv[1:]))",
]
ARENA2, MMAP1M = {"MALLOC_ARENA_MAX": "2"}, {"MALLOC_MMAP_THRESHOLD_": str(MiB)}
# name: (how to start it, environment, extra flags, message limit in bytes (None: the default))
VARIANTS: dict[str, tuple[list[str], dict[str, str], list[str], int | None]] = {
    "glibc, no trim": (NO_TRIM, {}, [], None),
    "arena-max-2, no trim": (NO_TRIM, ARENA2, [], None),
    "mmap-threshold-1M, no trim": (NO_TRIM, MMAP1M, [], None),
    "jemalloc, no trim": (NO_TRIM, {"LD_PRELOAD": JEMALLOC}, [], None),
    "16MiB limit, no trim": (NO_TRIM, {}, ["--max-message-bytes", str(16 * MiB)], 16 * MiB),
    "default queue, no trim": (NO_TRIM, {}, ["--max-queue-rows", "16384"], None),
    "glibc + trim": (SERVE, {}, [], None),
    "arena-max-2 + trim": (SERVE, ARENA2, [], None),
    "mmap-1M + trim": (SERVE, MMAP1M, [], None),
    "16MiB limit + trim": (SERVE, {}, ["--max-message-bytes", str(16 * MiB)], 16 * MiB),
    "default queue + trim": (SERVE, {}, ["--max-queue-rows", "16384"], None),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakSampler(threading.Thread):
    """Polls RSS every 10 ms; `take()` returns the peak since the last take."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, RuntimeError):
                return

    def take(self) -> float:
        peak, self.peak = self.peak, rss_mb(self.pid)
        return max(peak, self.peak)


async def burst(target: str, payload: bytes, concurrency: int, limit: int) -> dict[str, int]:
    options = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.use_local_subchannel_pool", 1),  # else the channels share one connection
    ]
    # One channel per caller: one HTTP/2 connection each, as independent clients would send them.
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(concurrency)]
    try:
        calls = [ch.unary_unary("/vae.v1.VAEService/Encode")(payload, timeout=120) for ch in channels]
        codes: dict[str, int] = {}
        for result in await asyncio.gather(*calls, return_exceptions=True):
            code = "OK" if isinstance(result, bytes) else result.code().name
            codes[code] = codes.get(code, 0) + 1
        return codes
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def measure(name: str, args: argparse.Namespace) -> list[object]:
    start_as, env, flags, limit = VARIANTS[name]
    limit = limit or 64 * MiB
    rows = min(args.rows, (limit - 4096) // (4 * 784))  # what a client splitting by the limit sends
    payload = vae_pb2.EncodeRequest(
        x=to_tensor(np.random.default_rng(0).random((rows, 784), dtype=np.float32))
    ).SerializeToString()
    queue = ["--max-queue-rows", str(max(16384, args.concurrency * rows))]
    cmd = [
        *start_as,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--no-http",
        "--log-level",
        "debug",
    ]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc, port = start_server([*cmd, *queue, *flags])
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    trims: list[float] = []  # the runner logs each malloc_trim's duration at debug level

    def drain_log() -> None:  # also keeps its log pipe from filling up
        for line in proc.stderr:
            if found := re.search(r"malloc_trim took ([\d.]+) ms", line):
                trims.append(float(found.group(1)))

    threading.Thread(target=drain_log, daemon=True).start()
    sampler = PeakSampler(proc.pid)
    sampler.start()
    try:
        target = f"127.0.0.1:{port}"
        asyncio.run(burst(target, payload, 1, limit))  # warm up: first allocations, ORT arenas
        start, after, peak, totals = rss_mb(proc.pid), [], 0.0, {}
        sampler.take()
        for _ in range(args.bursts):
            for code, n in asyncio.run(burst(target, payload, args.concurrency, limit)).items():
                totals[code] = totals.get(code, 0) + n
            peak = max(peak, sampler.take())
            time.sleep(args.pause_s)  # between bursts: what an idle moment returns
            after.append(rss_mb(proc.pid))
        time.sleep(args.settle_s)
        end = rss_mb(proc.pid)
    finally:
        sampler.stop.set()
        proc.terminate()
        proc.wait(30)
    per_request = (peak - start) / args.concurrency
    outcome = " ".join(f"{k}:{v}" for k, v in sorted(totals.items()))
    print(f"{name}: {len(payload) / 1e6:.1f} MB x {args.concurrency}, {outcome}", file=sys.stderr)
    return [
        name,
        f"{len(payload) / 1e6:.1f}",
        f"{start:.0f}",
        *(f"{a:.0f}" for a in after),
        f"{peak:.0f}",
        f"{end:.0f}",
        f"{per_request:.0f}",
        len(trims),
        f"{max(trims, default=0):.0f}",
        outcome,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--pause-s", type=float, default=1.5, help="idle time after each burst")
    parser.add_argument("--settle-s", type=float, default=3.0, help="idle time before the last reading")
    parser.add_argument(
        "--variants", default=";".join(VARIANTS), help=f"';'-separated: {'; '.join(VARIANTS)}"
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    rows = [measure(name.strip(), args) for name in args.variants.split(";")]
    headers = [
        "variant",
        "MB/request",
        "start MB",
        *(f"burst {i + 1}" for i in range(args.bursts)),
        "peak MB",
        "end MB",
        "MB/in-flight",
        "trims",
        "max trim ms",
        "replies",
    ]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
