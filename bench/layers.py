"""Where a lone Decode's time goes inside the server, layer by layer, without the transport.

    python bench/layers.py [--calls 20000]

Calls each layer of the default model's decode path in process, one call at a time, from ONNX
Runtime up to the servicer's `Decode` (given a stand-in for gRPC's context), and prints each
layer's time per call and what it adds to the layer below (the fastest of 3 rounds). Beside
it, the same layers' own operations timed hot, in a tight loop of their own: the difference is
the interpreter running cold after each ORT run has streamed the model's weights through the
caches, which no shaving of Python operations wins back.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
from _table import markdown_table

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.server.app import VaeServer
from vae_serve.server.grpc.servicer import VAEServicer
from vae_serve.server.protocol import dataplane
from vae_serve.server.protocol.calls import request_id_from
from vae_serve.server.protocol.validation import check_finite, check_matrix
from vae_serve.server.settings import Settings
from vae_serve.tensor import from_tensor, to_tensor

METADATA = (("user-agent", "grpc-python"),)


class Context:
    """What the rpc wrapper asks of gRPC's servicer context, answered at no cost."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return METADATA

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, metadata: object) -> None:
        return None

    async def abort(self, code: object, details: str, metadata: object = ()) -> None:
        raise RuntimeError(f"{code}: {details}")


def fastest(call: Callable[[], object], calls: int) -> float:
    """Microseconds per call, the fastest of 3 rounds."""
    for _ in range(calls // 10):
        call()
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - began) / calls)
    return best * 1e6


async def fastest_async(call: Callable[[], Awaitable[object]], calls: int) -> float:
    for _ in range(calls // 10):
        await call()
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(calls):
            await call()
        best = min(best, (time.perf_counter() - began) / calls)
    return best * 1e6


async def measure(calls: int) -> list[list[object]]:
    server = VaeServer(Settings())
    server.load()
    plane = server.dataplane
    servicer = VAEServicer(plane)
    served = plane.current()
    counted = served.decoder
    batcher = counted.runner
    timed = batcher.graph
    z = np.zeros((1, served.model.latent_dim), np.float32)
    x = np.zeros((1, served.model.input_dim), np.float32)
    request, context = vae_pb2.DecodeRequest(z=to_tensor(z)), Context()
    metrics = plane.metrics
    queue_time = metrics.queue_duration.labels(served.model.name, "decoder", served.version)
    layers: list[tuple[str, float, float]] = [
        ("ONNX Runtime (Graph.run)", fastest(lambda: timed.graph.run(z), calls), 0.0),
        (
            "TimedGraph.run: run metrics",
            fastest(lambda: timed.run(z), calls),
            fastest(lambda: (queue_time.observe(1e-4), queue_time.observe(1e-4), time.time()), calls),
        ),
        (
            "BatchingRunner.run: queue, one loop turn",
            await fastest_async(lambda: batcher.run(z), calls),
            await fastest_async(lambda: asyncio.sleep(0), calls),
        ),
        ("CountedRunner.run: statistics", await fastest_async(lambda: counted.run(z), calls), 0.0),
        (
            "DataPlane.decode: validation",
            await fastest_async(lambda: plane.decode(z), calls),
            fastest(
                lambda: (
                    check_matrix(z, "z", served.model.latent_dim, 4096),
                    check_finite(z, "z"),
                    dataplane._check_decoded(x, "z"),
                ),
                calls,
            ),
        ),
        (
            "VAEServicer.Decode: edge, protobuf",
            await fastest_async(lambda: servicer.Decode(request, context), calls),
            fastest(
                lambda: (
                    from_tensor(request.z, "z"),
                    vae_pb2.DecodeResponse(x=to_tensor(x), model_version="1"),
                    request_id_from(METADATA),
                    metrics.record_request("Decode", "OK", 1e-3),
                ),
                calls,
            ),
        ),
    ]
    plane.close()
    rows, below = [], None
    for name, us, hot in layers:
        added = "" if below is None else f"{us - below:.1f}"
        rows.append([name, f"{us:.1f}", added, f"{hot:.1f}" if hot else ""])
        below = us
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.calls))
    headers = ["layer", "us per call", "added to the layer below", "its own operations, hot (us)"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
