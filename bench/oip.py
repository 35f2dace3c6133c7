"""Load on the Open Inference Protocol endpoint, built with tritonclient (never our own stubs:
tritonclient and vae_serve's `inference` messages cannot live in one process).

`request_bytes` gives a serialized ModelInferRequest for bench/loadgen.py (server-side cost);
`tritonclient_load` drives tritonclient's asyncio client (what an OIP user sees).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import tritonclient.grpc.aio as triton_aio
from loadgen import LoadResult
from tritonclient.grpc import service_pb2

__all__ = ["INFER_PATH", "request_bytes", "tritonclient_load"]

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def _latents(rows: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, 32), dtype=np.float32)


def request_bytes(rows: int = 1) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="vae_decoder")
    request.inputs.add(name="z", datatype="FP32", shape=[rows, 32])
    request.raw_input_contents.append(_latents(rows).tobytes())
    return request.SerializeToString()


async def _drive(target: str, concurrency: int, duration: float, warmup: float) -> LoadResult:
    clients = [triton_aio.InferenceServerClient(target) for _ in range(4)]
    tensor = triton_aio.InferInput("z", [1, 32], "FP32")
    tensor.set_data_from_numpy(_latents(1))
    result = LoadResult()
    began = time.perf_counter()
    measure_from, stop_at = began + warmup, began + warmup + duration

    async def worker(i: int) -> None:
        client = clients[i % len(clients)]
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            try:
                await client.infer("vae_decoder", [tensor], client_timeout=10)
                ok = True
            except Exception:  # tritonclient wraps every RPC failure in InferenceServerException
                ok = False
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at and ok:
                result.requests += 1
                result.latencies.append(done - sent)
            elif sent >= measure_from and done <= stop_at:
                result.errors["error"] = result.errors.get("error", 0) + 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for client in clients:
        await client.close()
    result.seconds = duration
    return result


def tritonclient_load(target: str, concurrency: int, duration: float, warmup: float = 1.0) -> LoadResult:
    return asyncio.run(_drive(target, concurrency, duration, warmup))
