"""Two builds of vae-serve side by side: a git revision (the base) against the working tree, or
the working tree against itself under other flags or environment, measured alternately by the
same client.

    python bench/compare.py --base HEAD~1                      # did the last commit cost anything?
    python bench/compare.py --env OTEL_TRACES_EXPORTER=console  # ...the same code, tracing on
    python bench/compare.py --base main --flags "--workers 2" --concurrency 128

Each pair runs the base, then the candidate (or the reverse, alternating), closed loop over gRPC
(bench/loadgen.py, batch-1 Decode by default; `--rate` for Poisson arrivals instead); the table
gives, per load, the medians and the spread of the ratio candidate / base for requests/s and for
the server's CPU time per request (user + system, of the whole process tree, from /proc), and
both sides' median p50, p99 and p99/p50. CPU per request is the steadier figure on a shared
machine. The base revision is imported from a temporary checkout
(bench/_revisions.py); the venv, so every dependency, is the working tree's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from _revisions import importable
from _table import markdown_table
from _test_support import free_port, start_server
from loadgen import LoadSpec, run_load
from oip import INFER_PATH, request_bytes

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of `pid` and every descendant still running."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        todo += [int(child) for child in children]
    return total


def serve(flags: list[str], env: dict[str, str], stack: ExitStack) -> tuple[int, str]:
    """vae-serve with `flags` (gRPC only, loopback), stopped with `stack`: its PID and target."""
    ports = ["--port", str(free_port()), "--metrics-port", str(free_port()), "--no-http"]
    args = [
        "-m",
        "vae_serve.server.cli",
        "--host",
        "127.0.0.1",
        "--metrics-host",
        "127.0.0.1",
        *ports,
        *flags,
    ]
    proc, port = start_server(args, env=env, cwd=tempfile.gettempdir())  # not ROOT: its vae_serve/ would win
    stack.callback(lambda: (proc.terminate(), proc.wait(30)))
    return proc.pid, f"127.0.0.1:{port}"


def _measure(pid: int, spec: LoadSpec) -> tuple[float, float, float, float]:
    """(requests/s, server CPU microseconds per request, p50 ms, p99 ms) of one run."""
    before = cpu_seconds(pid)
    result = run_load(spec)
    spent = cpu_seconds(pid) - before  # the warm-up's CPU too: the same share on both sides
    calls = result.requests * (spec.warmup + spec.duration) / spec.duration
    return (
        result.throughput,
        spent / max(calls, 1) * 1e6,
        result.percentile(50) * 1e3,
        result.percentile(99) * 1e3,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="git revision of the base build (default: the working tree)")
    parser.add_argument("--flags", default="", help="server flags for both builds")
    parser.add_argument("--candidate-flags", default="", help="server flags for the candidate only")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the candidate only")
    parser.add_argument("--method", default="Decode", help=f"Encode, Decode or {INFER_PATH} (vae_decoder)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: Poisson arrivals per second")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--channels", type=int, default=4, help="connections per load process")
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    args = parser.parse_args()
    if not args.base and not args.env and not args.candidate_flags:
        parser.error("nothing to compare: give --base, --env or --candidate-flags")
    rows = []
    with ExitStack() as stack:
        base_env = dict(os.environ)
        if args.base:
            base_env["PYTHONPATH"] = str(importable(args.base, stack))
        candidate_env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
        flags = shlex.split(args.flags)
        servers = {
            "base": serve(flags, base_env, stack),
            "candidate": serve(flags + shlex.split(args.candidate_flags), candidate_env, stack),
        }
        loads = [f"rate {args.rate:g}/s"] if args.rate else [f"c={c}" for c in args.concurrency.split(",")]
        for load in loads:
            shape = {"rate": args.rate} if args.rate else {"concurrency": int(load[2:])}
            got: dict[str, list[tuple[float, float, float, float]]] = {"base": [], "candidate": []}
            for i in range(args.pairs):
                for name in ("base", "candidate") if i % 2 == 0 else ("candidate", "base"):
                    pid, target = servers[name]
                    spec = LoadSpec(
                        target,
                        args.method,
                        request=request_bytes() if args.method == INFER_PATH else b"",
                        duration=args.duration,
                        channels=args.channels,
                        processes=args.processes,
                        **shape,
                    )
                    got[name].append(_measure(pid, spec))
            rate = [c[0] / b[0] for b, c in zip(got["base"], got["candidate"], strict=True)]
            cpu = [c[1] / b[1] for b, c in zip(got["base"], got["candidate"], strict=True)]
            tail = {name: [r[3] / r[2] for r in runs] for name, runs in got.items()}
            rows.append(
                [
                    args.method,
                    load,
                    f"{statistics.median(r[0] for r in got['base']):.0f}",
                    f"{statistics.median(r[0] for r in got['candidate']):.0f}",
                    f"{statistics.median(rate):.3f} ({min(rate):.2f}-{max(rate):.2f})",
                    f"{statistics.median(r[1] for r in got['base']):.0f}",
                    f"{statistics.median(r[1] for r in got['candidate']):.0f}",
                    f"{statistics.median(cpu):.3f} ({min(cpu):.2f}-{max(cpu):.2f})",
                    " / ".join(f"{statistics.median(r[2] for r in got[n]):.2f}" for n in got),
                    " / ".join(f"{statistics.median(r[3] for r in got[n]):.2f}" for n in got),
                    " / ".join(f"{statistics.median(tail[n]):.1f}" for n in got),
                ]
            )
    what = f"base {args.base or 'working tree'}, candidate working tree"
    what += "".join(f" {e}" for e in args.env) + (f" {args.candidate_flags}" if args.candidate_flags else "")
    print(f"{what}; {args.pairs} pairs of {args.duration:g} s")
    headers = [
        "method",
        "load",
        "base req/s",
        "candidate req/s",
        "req/s ratio (median, spread)",
        "base CPU us/req",
        "candidate CPU us/req",
        "CPU ratio (median, spread)",
        "p50 ms: base / candidate",
        "p99 ms: base / candidate",
        "p99 / p50: base / candidate",
    ]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    sys.exit(main())
