"""KServe v2 REST on vae-serve against Triton's HTTP endpoint, the same decoder graph, JSON and
binary (Triton's binary tensor extension) bodies, closed loop at concurrency 1, 8 and 32,
alternating rounds:

    python bench/rest_triton.py [--model-dir models/fashion-vae/2] [--rounds 2] [--duration 4]

Triton runs the peer harness's way with its HTTP endpoint allowed (bench/_triton.py), with its
dynamic batcher (max batch 64, 2000 us window) and without; vae-serve with its defaults. The
client is bench/rest.py's: one kept-alive HTTP/1.1 connection per caller, requests built once,
answers read by length and not parsed, so it costs the same against every server. Server CPU per
request is the whole process tree's, from /proc, over the measured window.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack
from pathlib import Path

from _table import markdown_table, spread
from _test_support import free_port, start_server_ports
from _triton import start_triton
from compare import cpu_seconds
from rest import load, request

REPO_ROOT = Path(__file__).resolve().parent.parent


def _serve_http(model_dir: Path, stack: ExitStack) -> tuple[int, int]:
    args = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--port", str(free_port())]
    args += ["--metrics-port", "0", "--http-host", "127.0.0.1", "--http-port", "0"]
    args += ["--model-repository", str(model_dir.resolve().parent.parent), "--model-version", model_dir.name]
    proc, (_, port) = start_server_ports(args, r"serving on [\d.]+:(\d+) .*HTTP on [\d.]+:(\d+)")
    stack.callback(lambda: (proc.terminate(), proc.wait(30)))
    return proc.pid, port


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "fashion-vae" / "2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    results: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    with ExitStack() as stack:
        servers = {"vae-serve": (*_serve_http(args.model_dir, stack), "vae_decoder")}
        for batching, name in ((True, "Triton, batcher"), (False, "Triton")):
            triton = start_triton(args.model_dir, batching, stack, http=True)
            assert triton.http_port is not None
            servers[name] = (triton.pid, triton.http_port, "decoder")
        for turn in range(args.rounds):
            for kind in ("binary", "JSON"):
                for level in levels:
                    order = list(servers) if turn % 2 == 0 else list(reversed(servers))
                    for name in order:
                        pid, port, model = servers[name]
                        payload = request(port, 1, kind == "binary", model)
                        before = cpu_seconds(pid)
                        rate, p50 = load(port, payload, level, args.duration)
                        spent = cpu_seconds(pid) - before  # with the 1 s warm-up: the same share for all
                        per_request = spent / (rate * (args.duration + 1)) * 1e6
                        results.setdefault((kind, name, level), []).append((rate, p50, per_request))
    rows = []
    for kind in ("binary", "JSON"):
        for level in levels:
            ours = results[(kind, "vae-serve", level)]
            for name in servers:
                runs = results[(kind, name, level)]
                rates = [r[0] for r in runs]
                pairs = list(zip(ours, runs, strict=True))
                rows.append(
                    [
                        kind,
                        level,
                        name,
                        f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})",
                        f"{statistics.median(r[1] for r in runs) * 1e3:.2f}",
                        f"{statistics.median(r[2] for r in runs):,.0f}",
                        "" if name == "vae-serve" else spread([o[0] / r[0] for o, r in pairs]),
                        "" if name == "vae-serve" else spread([r[1] / o[1] for o, r in pairs]),
                    ]
                )
    header = ["body", "concurrency", "server", "req/s (range)", "p50 ms", "server CPU us/req"]
    header += ["vae-serve / it, req/s", "its p50 / vae-serve's"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
