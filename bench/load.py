"""The whole load comparison in one run (under 5 minutes on 2 cores), printed as one table.

    python bench/load.py [--duration 4] [--workers 2]

Floors, measured in the same run: ONNX Runtime called in-process, and a bare gRPC echo that
answers the same messages with canned responses (bench/_echo.py), and that echo also running the
graph on each call's row ("echo + compute": what a lone request cannot go below). Then vae-serve with batching
off (--max-batch-size 1: ORT called from the handler) and on (the default), closed loop at
concurrency 1, 8, 32 and 128 for batch-1 Decode and Encode; Decode at batch 256 in rows/s against
in-process ORT; the Open Inference Protocol endpoint (raw requests, and tritonclient's asyncio
client); and open-loop Poisson load at 50% and 90% of the highest throughput measured.
The client runs on the same cores as the servers, as in serving-notes.md: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import operator
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _table import markdown_table
from _test_support import free_port, start_server
from loadgen import LoadResult, LoadSpec, run_load
from oip import INFER_PATH, request_bytes, tritonclient_load

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "fashion-vae" / "1"
CONCURRENCY = (1, 8, 32, 128)


def ort_throughput(graph: str, rows: int, seconds: float = 2.0) -> float:
    """Runs per second of one graph at `rows`, in-process, one thread (as the server runs it)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL_DIR / graph), options, providers=["CPUExecutionProvider"])
    width = session.get_inputs()[0].shape[1]
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((rows, width), dtype=np.float32)}
    for _ in range(50):
        session.run(None, feed)
    runs, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        session.run(None, feed)
        runs += 1
    return runs / (time.perf_counter() - began)


def serve(device: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """A vae-serve process on free loopback ports (fixed ones, as workers need them)."""
    ports = ["--port", str(free_port()), "--metrics-port", str(free_port()), "--http-port", str(free_port())]
    args = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--device", device, *ports, *flags]
    proc, port = start_server(args)
    return proc, f"127.0.0.1:{port}"


def row(scenario: str, server: str, load: str, result: LoadResult, floor: LoadResult | None = None) -> dict:
    s = result.summary()
    return {
        "scenario": scenario,
        "server": server,
        "load": load,
        **s,
        "vs_echo": round(result.throughput / floor.throughput, 2) if floor else None,
    }


class Comparison:
    """The servers under test, started once, and the rows of the table as they are measured."""

    def __init__(self, duration: float, device: str) -> None:
        self.duration, self.device = duration, device
        self.rows: list[dict] = []
        self.procs: list[subprocess.Popen] = []
        echo, echo_port = start_server([str(ROOT / "bench" / "_echo.py")])
        computing, computing_port = start_server(
            [str(ROOT / "bench" / "_echo.py"), "--compute", str(MODEL_DIR)]
        )
        self.procs += [echo, computing]
        self.servers = {"echo": f"127.0.0.1:{echo_port}", "echo + compute": f"127.0.0.1:{computing_port}"}
        for name, flags in (("batching off", ("--max-batch-size", "1")), ("batching on", ())):
            self.servers[name] = self.start(*flags)

    def start(self, *flags: str) -> str:
        proc, target = serve(self.device, *flags)
        self.procs.append(proc)
        return target

    def load(self, server: str, **kw: object) -> LoadResult:
        return run_load(LoadSpec(target=self.servers.get(server, server), duration=self.duration, **kw))

    def closed_loop(self) -> None:
        for method, graph in (("Decode", "decoder.onnx"), ("Encode", "encoder.onnx")):
            self.rows.append(
                {
                    "scenario": f"{method} b1",
                    "server": "ORT in-process",
                    "load": "1 thread",
                    "throughput": round(ort_throughput(graph, 1), 1),
                }
            )
            for c in CONCURRENCY:
                floor = self.load("echo", method=method, concurrency=c)
                self.rows.append(row(f"{method} b1", "echo", f"c={c}", floor, floor))
                for name in ("echo + compute", "batching off", "batching on"):
                    result = self.load(name, method=method, concurrency=c)
                    server = name if name.startswith("echo") else f"vae-serve {name}"
                    self.rows.append(row(f"{method} b1", server, f"c={c}", result, floor))

    def oip_and_workers(self, workers: int) -> None:
        floor = self.load("echo", method="Decode", concurrency=32)
        raw = self.load("batching on", method=INFER_PATH, request=request_bytes(1), concurrency=32)
        self.rows.append(row("Decode b1 via OIP", "vae-serve batching on", "c=32, raw bytes", raw, floor))
        client = tritonclient_load(self.servers["batching on"], 32, self.duration)
        self.rows.append(
            row("Decode b1 via OIP", "vae-serve batching on", "c=32, tritonclient.aio", client, floor)
        )
        if workers > 1:
            target = self.start("--workers", str(workers))
            result = self.load(target, method="Decode", concurrency=32, channels=8)
            self.rows.append(row("Decode b1", f"vae-serve on, {workers} workers", "c=32", result, floor))

    def big_batches_and_poisson(self) -> None:
        ort_rows = ort_throughput("decoder.onnx", 256) * 256
        self.rows.append(
            {
                "scenario": "Decode b256",
                "server": "ORT in-process",
                "load": "1 thread",
                "throughput": round(ort_rows, 1),
                "unit": "rows/s",
            }
        )
        big = self.load("batching on", method="Decode", rows=256, concurrency=2)
        self.rows.append(
            {
                **row("Decode b256", "vae-serve batching on", "c=2", big),
                "unit": "rows/s",
                "throughput": round(big.throughput * 256, 1),
                "vs_ort": round(big.throughput * 256 / ort_rows, 2),
            }
        )
        on = [r for r in self.rows if r["server"] == "vae-serve batching on" and r["scenario"] == "Decode b1"]
        peak = max(r["throughput"] for r in on)
        for share in (0.5, 0.9):
            result = self.load("batching on", method="Decode", rate=share * peak)
            self.rows.append(
                row("Decode b1", "vae-serve batching on", f"Poisson {share:.0%} of {peak:.0f}/s", result)
            )

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument(
        "--workers", type=int, default=2, help="also run batching on with N workers (0: skip)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the servers' --device")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    comparison = Comparison(args.duration, args.device)
    try:
        comparison.closed_loop()
        comparison.oip_and_workers(args.workers)
        comparison.big_batches_and_poisson()
    finally:
        comparison.stop()
    print(report(comparison.rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(comparison.rows, indent=2) + "\n")
    print(f"\nwrote {args.json}")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def report(rows: list[dict]) -> str:
    headers = [
        "scenario",
        "server",
        "load",
        "throughput (/s)",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "errors",
        "vs echo",
    ]
    table = [
        [
            r["scenario"],
            r["server"],
            r["load"],
            f"{r['throughput']:,.0f}{' rows' if r.get('unit') else ''}",
            *(_ms(r.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")),
            sum(r["errors"].values()) if "errors" in r else "",
            r.get("vs_echo") or r.get("vs_ort") or "",
        ]
        for r in rows
    ]
    return markdown_table(headers, table) + "\n\n" + targets(rows)


def targets(rows: list[dict]) -> str:
    def find(scenario: str, server: str, load: str) -> dict:
        return next(r for r in rows if (r["scenario"], r["server"], r["load"]) == (scenario, server, load))

    on32, off32 = (
        find("Decode b1", "vae-serve batching on", "c=32"),
        find("Decode b1", "vae-serve batching off", "c=32"),
    )
    echo32, echo1 = find("Decode b1", "echo", "c=32"), find("Decode b1", "echo", "c=1")
    on1 = find("Decode b1", "vae-serve batching on", "c=1")
    computing1 = find("Decode b1", "echo + compute", "c=1")
    big = find("Decode b256", "vae-serve batching on", "c=2")
    poisson = next(r for r in rows if r["load"].startswith("Poisson 50%"))
    at_least, at_most = operator.ge, operator.le
    checks = [
        (
            "batching on / off throughput, Decode c=32",
            on32["throughput"] / off32["throughput"],
            at_least,
            1.3,
        ),
        (
            "batching on / echo throughput, Decode c=32",
            on32["throughput"] / echo32["throughput"],
            at_least,
            0.8,
        ),
        ("p50 at c=1, vae-serve / echo (Decode)", on1["p50_ms"] / echo1["p50_ms"], at_most, 1.25),
        (
            "p50 at c=1, vae-serve / (echo + compute) (Decode)",
            on1["p50_ms"] / computing1["p50_ms"],
            at_most,
            1.25,
        ),
        ("Decode b256 rows/s, vae-serve / ORT in-process", big["vs_ort"], at_least, 0.85),
        ("p99 / p50 at 50% Poisson load", poisson["p99_ms"] / poisson["p50_ms"], at_most, 3.0),
    ]
    table = [
        [
            name,
            f"{value:.2f}",
            f"{'>=' if op is at_least else '<='} {goal}",
            "met" if op(value, goal) else "NOT met",
        ]
        for name, value, op, goal in checks
    ]
    return markdown_table(["target", "measured", "goal", ""], table)


if __name__ == "__main__":
    main()
