"""What Triton's statistics add to the hot path: per request (CountedRunner: two clock reads and
one summary observation) and per ONNX Runtime run (one clock read and one gauge; a run that
served several requests one counter more),
in one process and in prometheus-client's multiprocess mode (what --workers uses).

    python bench/stats_overhead.py [--iterations 200000]

Times a no-op runner bare and wrapped, and the per-run additions alone; medians of 5 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def measure(iterations: int) -> dict[str, float]:
    from vae_serve.server.runners.statistics import CountedRunner
    from vae_serve.server.telemetry.metrics import Metrics

    metrics = Metrics()
    x, out = np.zeros((1, 4), np.float32), [np.zeros((1, 4), np.float32)]

    class Bare:
        async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
            return out

        def close(self) -> None: ...

    bare, counted = Bare(), CountedRunner(Bare(), metrics, "decoder", "1", "fashion-vae")
    last_run = metrics.last_run.labels("fashion-vae", "decoder", "1")

    async def loop(runner: object) -> float:
        began = time.perf_counter()
        for _ in range(iterations):
            await runner.run(x)
        return (time.perf_counter() - began) / iterations

    def per_run() -> float:
        began = time.perf_counter()
        for _ in range(iterations):
            last_run.set(time.time())
        return (time.perf_counter() - began) / iterations

    counter = metrics.requests.labels("Decode", "OK", "fashion-vae")

    def one_counter() -> float:  # the scale: one increment of a counter the server already has
        began = time.perf_counter()
        for _ in range(iterations):
            counter.inc()
        return (time.perf_counter() - began) / iterations

    rounds = [
        (asyncio.run(loop(bare)), asyncio.run(loop(counted)), per_run(), one_counter()) for _ in range(5)
    ]
    bare_s, counted_s, run_s, inc_s = (statistics.median(r[i] for r in rounds) for i in range(4))
    return {"request_us": (counted_s - bare_s) * 1e6, "run_us": run_s * 1e6, "inc_us": inc_s * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.iterations)))
        return
    print("| mode | added per request (us) | added per unbatched run (us) | one counter increment (us) |")
    print("|---|---|---|---|")
    for mode in ("one process", "multiprocess (--workers)"):
        env = dict(os.environ)
        with tempfile.TemporaryDirectory() as folder:
            if mode != "one process":
                env["PROMETHEUS_MULTIPROC_DIR"] = folder
            cmd = [sys.executable, __file__, "--measure", "--iterations", str(args.iterations)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout)
        cells = (result[k] for k in ("request_us", "run_us", "inc_us"))
        print(f"| {mode} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
