"""Sequential latency of vae-serve against its two floors, measured in one run on one machine.

    python bench/latency.py [--requests 1000] [--model-dir models/fashion-vae/1]

Floors: ONNX Runtime called in-process (the model's own cost) and a bare gRPC echo that answers
the same messages with a canned response of the same size (the transport's cost). vae-serve can
at best cost the sum of the two; the table shows how close it gets. Ratios, not absolute times,
are what carry over between runs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from _table import markdown_table
from _test_support import start_server

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor

ROOT = Path(__file__).resolve().parent.parent
CASES = [("Encode", 1), ("Decode", 1), ("Encode", 256), ("Decode", 256)]


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def ort_times(model_dir: Path, method: str, rows: int, n: int) -> list[float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    graph = "encoder.onnx" if method == "Encode" else "decoder.onnx"
    session = ort.InferenceSession(str(model_dir / graph), options, providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    width = session.get_inputs()[0].shape[1]
    feed = {feed_name: np.random.default_rng(0).random((rows, width), dtype=np.float32)}
    times = []
    for _ in range(n + n // 10):
        began = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - began)
    return times[n // 10 :]


def request_for(method: str, rows: int, dims: dict[str, int]) -> object:
    data = np.random.default_rng(0).random((rows, dims[method]), dtype=np.float32)
    if method == "Encode":
        return vae_pb2.EncodeRequest(x=to_tensor(data))
    return vae_pb2.DecodeRequest(z=to_tensor(data))


def rpc_times(target: str, method: str, request: object, n: int) -> list[float]:
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        call = getattr(vae_pb2_grpc.VAEServiceStub(channel), method)
        times = []
        for _ in range(n + n // 10):
            began = time.perf_counter()
            call(request, timeout=10)
            times.append(time.perf_counter() - began)
    return times[n // 10 :]


def report(results: list[dict]) -> str:
    headers = [
        "RPC",
        "batch",
        "ORT in-process p50 (us)",
        "echo p50 / p99 (us)",
        "vae-serve p50 / p99 (us)",
        "vae-serve / echo (p50)",
        "vae-serve / (echo + ORT) (p50)",
    ]
    rows = []
    for r in results:
        floor = r["echo_p50_us"] + r["ort_p50_us"]
        rows.append(
            [
                r["method"],
                r["batch"],
                f"{r['ort_p50_us']:,.0f}",
                f"{r['echo_p50_us']:,.0f} / {r['echo_p99_us']:,.0f}",
                f"{r['serve_p50_us']:,.0f} / {r['serve_p99_us']:,.0f}",
                f"{r['serve_p50_us'] / r['echo_p50_us']:.2f}x",
                f"{r['serve_p50_us'] / floor:.2f}x",
            ]
        )
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=1000, help="timed calls per batch-1 case (1/5 at 256)"
    )
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "fashion-vae" / "1")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    card = json.loads((args.model_dir / "model.json").read_text())
    dims = {"Encode": card["input_dim"], "Decode": card["latent_dim"]}
    serve_args = [
        "-m",
        "vae_serve.server.cli",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--model-repository",
        str(args.model_dir.parent.parent),
        "--model",
        args.model_dir.parent.name,
        "--model-version",
        args.model_dir.name,
        "--device",
        "cpu",
        "--intra-op-threads",
        "1",
    ]
    echo_args = [
        str(ROOT / "bench" / "_echo.py"),
        "--input-dim",
        str(dims["Encode"]),
        "--latent-dim",
        str(dims["Decode"]),
    ]
    server, server_port = start_server(serve_args)
    echo, echo_port = start_server(echo_args)
    rows_out = []
    try:
        for method, rows in CASES:
            n = args.requests if rows == 1 else max(20, args.requests // 5)
            request = request_for(method, rows, dims)
            floor_ort = ort_times(args.model_dir, method, rows, n)
            floor_echo = rpc_times(f"127.0.0.1:{echo_port}", method, request, n)
            served = rpc_times(f"127.0.0.1:{server_port}", method, request, n)
            rows_out.append(
                {
                    "method": method,
                    "batch": rows,
                    "requests": n,
                    "ort_p50_us": statistics.median(floor_ort) * 1e6,
                    "echo_p50_us": statistics.median(floor_echo) * 1e6,
                    "echo_p99_us": percentile(floor_echo, 99) * 1e6,
                    "serve_p50_us": statistics.median(served) * 1e6,
                    "serve_p99_us": percentile(served, 99) * 1e6,
                }
            )
    finally:
        for proc in (server, echo):
            proc.terminate()
            proc.wait(30)
    print(report(rows_out))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows_out, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
