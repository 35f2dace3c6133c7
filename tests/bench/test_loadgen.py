"""The load generator sends its load the way the benchmarks say it does: each channel is an HTTP/2
connection of its own (gRPC would otherwise carry every channel to one target on one connection,
and the kernel would hand a `--workers` server's whole load to one worker).

The script is run as the benchmarks run it, `python bench/loadgen.py`: the tests import nothing
from bench/."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from support import PATIENCE_S, REPO_ROOT

# The benchmarks that start servers with the tests' process helpers (bench/_test_support.py).
STARTERS = sorted(
    path.name
    for path in (REPO_ROOT / "bench").glob("*.py")
    if not path.name.startswith("_") and "from _test_support import" in path.read_text()
)


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python bench/<script> args`, from the repository root, as the benchmarks are run."""
    return subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )


@pytest.mark.parametrize("script", STARTERS)
def test_benchmarks_find_the_tests_process_helpers(script):
    done = bench(script, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr


def test_each_channel_is_a_connection_of_its_own():
    peers: set[str] = set()
    lock = threading.Lock()

    def answer(_request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            peers.add(context.peer())  # the client's address and port: one per connection
        return b""

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    method = grpc.unary_unary_rpc_method_handler(answer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("vae.v1.VAEService", {"Decode": method}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        load = ["--target", f"127.0.0.1:{port}", "--method", "Decode", "--concurrency", "8"]
        load += ["--duration", "0.5", "--warmup", "0", "--channels", "4"]
        done = bench("loadgen.py", *load)
    finally:
        server.stop(None)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requests"] > 0 and not result["errors"], result
    assert len(peers) == 4, peers
