"""The HTTP port through the server's lifecycle and its settings: drain on SIGTERM, TLS and mutual
TLS from the same files as gRPC, CORS only for origins named, --no-http."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from support import (
    free_port,
    listening_ports,
    make_certificates,
    start_server_ports,
    start_vae_serve_http,
    wait_for,
)

from vae_serve.client import VaeClient

Z = {"z": [[0.0] * 32]}


@pytest.mark.slow
def test_sigterm_under_http_load_fails_no_admitted_request_and_readiness_turns_503():
    """Callers that ignore readiness and keep sending through the whole grace: each request is
    answered (200, or 503 once draining) or finds the port closed; none is cut off unanswered."""
    proc, _, port = start_vae_serve_http("--drain-grace-s", "3")
    url = f"http://127.0.0.1:{port}"
    outcomes: Counter[str] = Counter()
    lock, stop = threading.Lock(), threading.Event()

    def caller() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                try:
                    key = str(client.post("/v1/decode", json=Z).status_code)
                except httpx.ConnectError:
                    key = "not connected"  # the port has closed: never admitted
                except httpx.TransportError as exc:  # a request sent and never answered
                    key = f"broken: {type(exc).__name__}"
                with lock:
                    outcomes[key] += 1

    callers = [threading.Thread(target=caller) for _ in range(8)]  # never stopping for the drain
    try:
        for thread in callers:
            thread.start()
        wait_for(lambda: outcomes["200"] >= 200, "steady load")
        # The probe's connection is open before the signal, as a load balancer's is: a new one
        # may find the port already closed, which is the drain's intent, not a readiness answer.
        with httpx.Client(base_url=url, timeout=5) as probe:
            assert probe.get("/v2/health/ready").status_code == 200
            proc.send_signal(signal.SIGTERM)
            not_ready = probe.get("/v2/health/ready")
            assert not_ready.status_code == 503  # at once
            assert list(not_ready.json()) == ["error"]  # the protocol's error object, saying why
            assert not_ready.json()["error"].startswith("not ready (")
        assert proc.wait(timeout=20) == 0
    finally:
        stop.set()
        for thread in callers:
            thread.join(15)
        proc.kill()
        proc.wait()
    assert set(outcomes) <= {"200", "503", "not connected"}, outcomes
    print(f"SIGTERM under HTTP load: {dict(outcomes)}")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _tls_server(certs, *extra: str):
    args = ["--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"]), *extra]
    return start_vae_serve_http(*args)


def test_tls_and_mutual_tls_cover_http_too(certificates):
    certs = certificates
    proc, _, port = _tls_server(certs)
    try:
        trusted = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        assert httpx.get(f"https://127.0.0.1:{port}/v2", verify=trusted).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{port}/v2")  # plaintext on a TLS port
    finally:
        proc.terminate()
        proc.wait(30)
    proc, _, port = _tls_server(certs, "--tls-client-ca", str(certs["ca.pem"]))
    try:
        anonymous = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{port}/v2", verify=anonymous)
        known = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        known.load_cert_chain(certs["client.pem"], certs["client.key"])
        assert httpx.get(f"https://127.0.0.1:{port}/v2", verify=known).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


def _closed_after(port: int, limit_s: float) -> float:
    """Seconds until the server closes a connection that sends nothing (no TLS hello)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as silent:
        start = time.monotonic()
        with contextlib.suppress(ConnectionResetError):  # a reset is closed too
            assert silent.recv(1) == b""
        return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.timing
def test_a_silent_tls_connection_is_closed_at_the_receive_deadline_on_both_ports(certificates):
    """asyncio's TLS handshake timeout is 60 s and gRPC's 120 s: without a deadline of our own, a
    client opening connections and never saying hello holds sockets and memory for that long."""
    proc, grpc_port, http_port = _tls_server(certificates, "--receive-timeout-s", "1")
    try:
        with ThreadPoolExecutor(2) as both:  # the two ports at once: one deadline waited, not two
            waits = list(both.map(lambda port: _closed_after(port, limit_s=30), (http_port, grpc_port)))
        assert all(0.5 <= wait < 20 for wait in waits), waits  # 1 s, or 60/120 without the bound
        trusted = ssl.create_default_context(cafile=str(certificates["ca.pem"]))
        assert httpx.get(f"https://127.0.0.1:{http_port}/v2", verify=trusted).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_cors_only_for_the_origins_named():
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    proc, _, port = start_vae_serve_http("--http-cors-origins", '["https://app.example"]')
    try:
        allowed = httpx.options(f"http://127.0.0.1:{port}/v1/decode", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(
            f"http://127.0.0.1:{port}/v1/decode", headers={**preflight, "Origin": "https://evil"}
        )
        assert "access-control-allow-origin" not in other.headers
    finally:
        proc.terminate()
        proc.wait(30)
    proc, _, port = start_vae_serve_http()
    try:
        plain = httpx.get(f"http://127.0.0.1:{port}/v2", headers={"Origin": "https://app.example"})
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    finally:
        proc.terminate()
        proc.wait(30)


def test_no_http_serves_grpc_only():
    """--no-http: nothing listens on the HTTP port it names, the process listens on the gRPC and
    metrics ports alone, and gRPC serves."""
    http_port = free_port()
    cmd = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1"]
    cmd += ["--port", "0", "--metrics-port", "0", "--http-port", str(http_port), "--no-http"]
    pattern = r"serving on 127\.0\.0\.1:(\d+) \(plaintext\), no HTTP, metrics on http://127\.0\.0\.1:(\d+)/"
    proc, (grpc_port, metrics_port) = start_server_ports(cmd, pattern)
    try:
        assert listening_ports(proc.pid) == {grpc_port, metrics_port}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{http_port}/v2/health/live")
        with VaeClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.health() == "SERVING"
            assert client.decode(np.zeros((1, 32), np.float32)).shape == (1, 784)
    finally:
        proc.terminate()
        proc.wait(30)
