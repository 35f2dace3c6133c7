"""Which ASGI server carries the HTTP front end: uvicorn (httptools) against Hypercorn (h11),
each serving the same canned-reply router (bench/_http_echo.py), measured by the same client.

    pip install hypercorn && python bench/http_stack.py [--duration 5] [--repeats 3]

Decode batch 1 over KServe v2 REST, JSON and binary, at concurrency 1, 8 and 32; each scenario
runs `--repeats` times, alternating the two stacks; the table gives the medians and the spread
of the ratio hypercorn / uvicorn.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

from _table import markdown_table
from _test_support import free_port, start_server
from rest import load, request

ECHO = str(Path(__file__).resolve().parent / "_http_echo.py")


def _listening(port: int, timeout: float = 30) -> None:
    """Hypercorn binds after it has logged; wait until the port answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    procs, ports = [], {}
    rows: list[list[object]] = []
    try:
        for stack in ("uvicorn", "hypercorn"):
            proc, port = start_server([ECHO, "--port", str(free_port()), "--stack", stack], r":(\d+)$")
            procs.append(proc)
            _listening(port)
            ports[stack] = port
        for binary in (False, True):
            for concurrency in (1, 8, 32):
                got: dict[str, list[float]] = {"uvicorn": [], "hypercorn": []}
                for _ in range(args.repeats):
                    for stack, port in ports.items():
                        got[stack].append(load(port, request(port, 1, binary), concurrency, args.duration)[0])
                ratios = [h / u for h, u in zip(got["hypercorn"], got["uvicorn"], strict=True)]
                rows.append(
                    [
                        f"Decode b1 {'binary' if binary else 'JSON'}",
                        concurrency,
                        f"{statistics.median(got['uvicorn']):.0f}",
                        f"{statistics.median(got['hypercorn']):.0f}",
                        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
                    ]
                )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    headers = ["scenario", "concurrency", "uvicorn req/s", "hypercorn req/s", "hypercorn / uvicorn"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    sys.exit(main())
