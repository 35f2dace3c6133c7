"""One replica against two behind the deployment's nginx: what scaling out buys on this machine.

    python bench/scale_out.py [--concurrency 8,32] [--pairs 3] [--duration 4]

Starts two vae-serve replicas and two nginx instances rendered from the deployment's own template
(deploy/nginx): one balancing over both replicas, one whose two upstream entries are the same
replica. The same closed-loop gRPC load (bench/loadgen.py, batch-1 Decode) goes through each nginx
in turn, alternating, and the table gives the medians and the spread of the ratio two / one for
requests per second, beside both sides' p50 and p99. Replicas, nginx and the load generator share
this machine's cores: on a machine with as many cores as one replica uses, two replicas cannot do
more, and the table shows what the second one costs instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from _table import markdown_table
from _test_support import free_port, start_nginx, start_server
from loadgen import LoadSpec, run_load


def _replica(stack: ExitStack) -> tuple[int, int]:
    """A replica on loopback: its gRPC and HTTP ports."""
    grpc_port, http_port = free_port(), free_port()
    args = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1"]
    args += ["--port", str(grpc_port), "--metrics-port", str(free_port()), "--http-port", str(http_port)]
    proc, _ = start_server(args, cwd=tempfile.gettempdir())  # not the repository: its vae_serve/ would win
    stack.callback(lambda: (proc.terminate(), proc.wait(30)))
    return grpc_port, http_port


def _nginx(stack: ExitStack, replicas: list[tuple[int, int]]) -> str:
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    proc, port, _ = start_nginx(folder, [g for g, _ in replicas], [h for _, h in replicas])
    stack.callback(lambda: (proc.send_signal(signal.SIGQUIT), proc.wait(10)))
    return f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="8,32", help="comma-separated")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack:
        first, second = _replica(stack), _replica(stack)
        targets = {"one": _nginx(stack, [first, first]), "two": _nginx(stack, [first, second])}
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            got: dict[str, list[tuple[float, float, float]]] = {"one": [], "two": []}
            for i in range(args.pairs):
                for name in ("one", "two") if i % 2 == 0 else ("two", "one"):
                    spec = LoadSpec(targets[name], "Decode", concurrency=concurrency, duration=args.duration)
                    result = run_load(spec)
                    errors = sum(result.errors.values())
                    got[name].append((result.throughput, result.percentile(50) * 1e3, errors))
            ratio = [t[0] / o[0] for o, t in zip(got["one"], got["two"], strict=True)]
            rows.append(
                [
                    f"c={concurrency}",
                    f"{statistics.median(r[0] for r in got['one']):.0f}",
                    f"{statistics.median(r[0] for r in got['two']):.0f}",
                    f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})",
                    " / ".join(f"{statistics.median(r[1] for r in got[n]):.2f}" for n in got),
                    f"{sum(r[2] for n in got for r in got[n])}",
                ]
            )
    print(f"{os.cpu_count()} CPUs; {args.pairs} pairs of {args.duration:g} s, batch-1 Decode through nginx")
    header = ["load", "one replica req/s", "two replicas req/s", "two / one", "p50 ms: one / two", "errors"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
