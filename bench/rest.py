"""HTTP front end against its floor: Decode over KServe v2 REST, JSON and binary, at concurrency
1, 8 and 32, and batch-256 rows/s against in-process ONNX Runtime.

    python bench/rest.py [--duration 5] [--repeats 3]

The floor is the same HTTP stack answering a canned reply of the right size (bench/_http_echo.py);
"floor + compute" is that floor also running the decoder on each request's row, as a server
without batching must: what the front end would reach if it cost nothing beyond the floor.
The client is a lean asyncio HTTP/1.1 generator (one kept-alive connection per caller, requests
built once, replies read by Content-Length and not parsed), so it costs the same against both.
Each scenario runs `--repeats` times, alternating server and floor; the table gives the median
and the spread of the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from _table import markdown_table
from _test_support import free_port, start_server, start_server_ports

ROOT = Path(__file__).resolve().parent.parent
DECODER = ROOT / "models" / "fashion-vae" / "1" / "decoder.onnx"
L = 32


def request(port: int, rows: int, binary: bool, model: str = "vae_decoder") -> bytes:
    z = np.random.default_rng(0).standard_normal((rows, L), dtype=np.float32)
    tensor: dict = {"name": "z", "datatype": "FP32", "shape": [rows, L]}
    if binary:
        tensor["parameters"] = {"binary_data_size": z.nbytes}
        header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
        body, extra = header + z.tobytes(), f"Inference-Header-Content-Length: {len(header)}\r\n"
    else:
        tensor["data"] = z.ravel()
        body, extra = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY), ""
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def _caller(port: int, payload: bytes, until: float, warm_until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = re.compile(rb"\r\ncontent-length: (\d+)", re.I)  # not Inference-Header-Content-Length
    try:
        while (now := time.perf_counter()) < until:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            await reader.readexactly(int(length.search(head).group(1)))
            if now >= warm_until:
                latencies.append(time.perf_counter() - now)
    finally:
        writer.close()


def load(port: int, payload: bytes, concurrency: int, duration: float) -> tuple[float, float]:
    """(requests/s, p50 seconds) of a closed loop at `concurrency`, after a 1 s warm-up."""
    latencies: list[float] = []

    async def run() -> None:
        start = time.perf_counter()
        await asyncio.gather(
            *(_caller(port, payload, start + 1 + duration, start + 1, latencies) for _ in range(concurrency))
        )

    asyncio.run(run())
    return len(latencies) / duration, statistics.median(latencies)


def in_process_rows_per_s(rows: int = 256, seconds: float = 3.0) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(DECODER), options, providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).standard_normal((rows, L), dtype=np.float32)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"z": z})
        done += rows
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    serve = [
        "-m",
        "vae_serve.server.cli",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--metrics-port",
        "0",
    ]
    serve += ["--http-host", "127.0.0.1", "--http-port", "0"]
    procs = []
    rows: list[list[object]] = []
    try:
        server, (_, port) = start_server_ports(serve, r"serving on [\d.]+:(\d+) .*HTTP on [\d.]+:(\d+)")
        procs.append(server)
        echo_port, compute_port = free_port(), free_port()
        echo_args = [str(ROOT / "bench" / "_http_echo.py"), "--port", str(echo_port)]
        procs.append(start_server(echo_args, r"echo serving on [\d.]+:(\d+)")[0])
        compute_args = [str(ROOT / "bench" / "_http_echo.py"), "--port", str(compute_port)]
        compute_args += ["--compute", str(DECODER.parent)]
        procs.append(start_server(compute_args, r"echo serving on [\d.]+:(\d+)")[0])
        for binary in (False, True):
            kind = "binary" if binary else "JSON"
            for concurrency in (1, 8, 32):
                ratios, served, floors, p50s, computed, to_computed = [], [], [], [], [], []
                for _ in range(args.repeats):
                    got, p50 = load(port, request(port, 1, binary), concurrency, args.duration)
                    floor, floor_p50 = load(
                        echo_port, request(echo_port, 1, binary), concurrency, args.duration
                    )
                    with_compute = load(
                        compute_port, request(compute_port, 1, binary), concurrency, args.duration
                    )[0]
                    ratios.append(got / floor)
                    to_computed.append(got / with_compute)
                    served.append(got)
                    floors.append(floor)
                    computed.append(with_compute)
                    p50s.append((p50, floor_p50))
                median = statistics.median(ratios)
                p50, floor_p50 = statistics.median(p[0] for p in p50s), statistics.median(p[1] for p in p50s)
                rows.append(
                    [
                        f"Decode b1 {kind}",
                        concurrency,
                        f"{statistics.median(served):.0f}",
                        f"{statistics.median(floors):.0f}",
                        f"{median:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
                        f"{statistics.median(computed):.0f}",
                        f"{statistics.median(to_computed):.2f}x"
                        f" ({min(to_computed):.2f}-{max(to_computed):.2f})",
                        f"{p50 * 1e3:.2f} / {floor_p50 * 1e3:.2f}",
                    ]
                )
        ort_rows = in_process_rows_per_s()
        for binary in (True, False):
            kind = "binary" if binary else "JSON"
            results = [
                load(port, request(port, 256, binary), 4, args.duration)[0] * 256 for _ in range(args.repeats)
            ]
            got = statistics.median(results)
            rows.append(
                [
                    f"Decode b256 {kind} rows/s",
                    4,
                    f"{got:.0f}",
                    f"{ort_rows:.0f} (in-process ORT)",
                    f"{got / ort_rows:.2f}x",
                    "-",
                    "-",
                    "-",
                ]
            )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    headers = [
        "scenario",
        "concurrency",
        "vae-serve req/s",
        "floor req/s",
        "vs floor (median, spread)",
        "floor + compute req/s",
        "vs floor + compute",
        "p50 ms: vae-serve / floor",
    ]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    sys.exit(main())
