"""The load generator sends its load the way the benchmarks say it does: each channel is an HTTP/2
connection of its own (gRPC would otherwise carry every channel to one target on one connection,
and the kernel would hand a `--workers` server's whole load to one worker)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from loadgen import LoadSpec, run_load


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
        spec = LoadSpec(f"127.0.0.1:{port}", "Decode", concurrency=8, duration=0.5, warmup=0.0, channels=4)
        result = run_load(spec)
    finally:
        server.stop(None)
    assert result.requests > 0 and not result.errors
    assert len(peers) == 4, peers
