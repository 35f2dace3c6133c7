"""One real `vae-serve` process with HTTP for the module's tests, and an httpx client for it."""

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from support import start_vae_serve_http


@dataclass(frozen=True)
class HttpServer:
    url: str  # http://127.0.0.1:PORT
    address: str  # 127.0.0.1:PORT, as tritonclient takes it
    grpc_target: str


@pytest.fixture(scope="module")
def http_server() -> Iterator[HttpServer]:
    proc, grpc_port, http_port = start_vae_serve_http()
    try:
        yield HttpServer(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def http(http_server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=http_server.url, timeout=30) as client:
        yield client
