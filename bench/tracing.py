"""What tracing costs: throughput of Decode (batch 1, closed loop, concurrency 32) on servers that
differ only in their revision or their environment, measured in one run, alternating.

    python bench/tracing.py                 # before tracing / tracing off / tracing on at ratio 1.0
    python bench/tracing.py --rounds 7 --duration 5
    python bench/tracing.py --arm old=v0.2.0 --arm new=.           # any two revisions
    python bench/tracing.py --arm a=. --arm b=.,VAE_MAX_BATCH_SIZE=1   # any two environments
    python bench/tracing.py --off-path      # ns a request spends in the tracing hooks, tracing off

An arm is `NAME=REV[,VAR=VALUE...]`: REV "." is this working tree, anything else a git revision,
checked out into a temporary worktree and run from there; the variables are added to that
server's environment. An arm that sets OTEL_TRACES_EXPORTER=otlp exports to a sink in a process of
its own (bench/_otlp_sink.py) unless it names an endpoint. Every server runs the whole time; each
round loads every arm once, in an order that alternates, and the table gives each arm's median
throughput and the median of its per-round ratio to the first arm. The default "before" is the
parent of the commit (on main: the merge) that added server/telemetry/tracing.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from _revisions import ROOT, importable
from _table import markdown_table
from _test_support import free_port, start_server
from loadgen import LoadSpec, run_load

ON_AT_ONE = (
    "OTEL_TRACES_EXPORTER=otlp,OTEL_TRACES_SAMPLER=parentbased_traceidratio,OTEL_TRACES_SAMPLER_ARG=1.0"
)


def before_tracing() -> str:
    added = subprocess.run(
        # --first-parent: on main, the merge that brought tracing in, so "before" has all the rest;
        # the path it was added at, before the server's modules moved into subpackages
        ["git", "log", "--first-parent", "--diff-filter=A", "--format=%H", "--", "server/tracing.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("server/telemetry/tracing.py is not committed here; name the arms with --arm")
    return f"{added[-1]}^"


def _tree(rev: str, stack: contextlib.ExitStack) -> Path:
    """A directory from which `import vae_serve` gives revision `rev` ("." the working tree)."""
    return ROOT if rev == "." else importable(rev, stack)


def _serve(path: Path, extra: dict[str, str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, **extra}
    if path != ROOT:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    ports = ["--port", str(free_port()), "--metrics-port", str(free_port()), "--http-port", str(free_port())]
    args = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1", *ports]
    proc, port = start_server(args, env=env, cwd=tempfile.gettempdir())  # see bench/_revisions.py
    return proc, f"127.0.0.1:{port}"


@contextlib.contextmanager
def servers(arms: list[tuple[str, str, dict[str, str]]]) -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        sink = None
        targets = {}
        for name, rev, env in arms:
            if env.get("OTEL_TRACES_EXPORTER") == "otlp" and "OTEL_EXPORTER_OTLP_ENDPOINT" not in env:
                if sink is None:
                    proc, port = start_server(
                        [str(ROOT / "bench" / "_otlp_sink.py")], r"otlp sink on [\d.]+:(\d+)"
                    )
                    stack.callback(_stop, proc)
                    sink = f"http://127.0.0.1:{port}"
                env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
            proc, targets[name] = _serve(_tree(rev, stack), env)
            stack.callback(_stop, proc)
        yield targets


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def off_path_ns(calls: int = 1_000_000) -> float:
    """What the tracing and access-log hooks add to one request when both are off: every call a
    request makes into them (edge or endpoint, data plane, batcher, runner), timed in a loop."""
    import timeit

    from vae_serve.server.protocol.calls import request_id
    from vae_serve.server.telemetry import observe, tracing

    metadata = (("x-request-id", "abc"),)

    def one_request() -> None:
        observe.begin("Decode", metadata, str, "grpc")
        observe.note("fashion-vae", "1", 1)
        tracing.queued()
        request_id.get()  # the batcher's queue entry keeps it for its error line
        with tracing.compute_span("decoder", "CPUExecutionProvider", 1):
            pass

    return min(timeit.repeat(one_request, number=calls, repeat=5)) / calls * 1e9


def parse_arm(text: str) -> tuple[str, str, dict[str, str]]:
    name, _, spec = text.partition("=")
    rev, *variables = spec.split(",")
    return name, rev or ".", dict(v.split("=", 1) for v in variables)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arm", action="append", help="NAME=REV[,VAR=VALUE...] (repeat; the first is the base)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one run per arm")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--off-path", action="store_true", help="time the hooks with tracing off, and stop")
    a = parser.parse_args()
    if a.off_path:
        print(f"tracing and access-log hooks, both off: {off_path_ns():.0f} ns per request")
        return
    texts = a.arm or [
        f"before tracing={before_tracing()}",
        "tracing off=.",
        f"tracing on, ratio 1.0=.,{ON_AT_ONE}",
    ]
    arms = [parse_arm(t) for t in texts]
    names = [name for name, _, _ in arms]
    runs: dict[str, list[float]] = {name: [] for name in names}
    with servers(arms) as targets:
        for i in range(a.rounds):
            for name in names if i % 2 == 0 else reversed(names):
                spec = LoadSpec(targets[name], "Decode", 1, a.concurrency, duration=a.duration)
                result = run_load(spec)
                runs[name].append(result.throughput)
                print(
                    f"round {i + 1} {name}: {result.throughput:.0f}/s {result.errors or ''}", file=sys.stderr
                )
    base = names[0]
    table = []
    for name in names:
        ratios = [x / b for x, b in zip(runs[name], runs[base], strict=True)]
        spread = " ".join(f"{x:.0f}" for x in runs[name])
        table.append(
            [name, f"{statistics.median(runs[name]):.0f}", f"{statistics.median(ratios):.3f}", spread]
        )
    headers = ["arm", "Decode b1 c=32 (median, /s)", f"vs {base} (median of pairs)", "runs (/s)"]
    print(markdown_table(headers, table))


if __name__ == "__main__":
    main()
