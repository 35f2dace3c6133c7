"""The HTTP port as an attacker uses it: slow senders, too many connections, huge bodies. Each is
refused or cut off, and everyone else is still served."""

from __future__ import annotations

import socket
import time

import httpx
import numpy as np
import orjson
import pytest
from loop_probe import LOOP_STALL_BOUND_S, LoopProbe
from support import read_reply, start_vae_serve_http, wait_for


@pytest.fixture(scope="module")
def server():
    proc, grpc_port, http_port = start_vae_serve_http(
        "--receive-timeout-s", "1", "--http-max-connections", "64"
    )
    try:
        yield grpc_port, http_port
    finally:
        proc.terminate()
        proc.wait(30)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_slow_sender_is_cut_off_and_others_are_served(server):
    _, port = server
    slow = []
    for _ in range(16):  # headers trickled in, and bodies that never finish
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
        slow.append(sock)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        assert client.get("/v2/health/ready").status_code == 200  # served while they wait
    began = time.monotonic()
    assert all(closed_by_server(sock) for sock in slow + silent)  # after --receive-timeout-s
    assert time.monotonic() - began < 10
    for sock in slow + silent:
        sock.close()


def trickles_for(sock: socket.socket, seconds: float) -> bool:
    """Whether the server takes a blank line every 0.2 s for `seconds` without closing."""
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            sock.sendall(b"\r\n")
            time.sleep(0.2)  # the attacker's pace, not a wait for the server
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def test_blank_lines_after_a_request_do_not_keep_a_connection(server):
    """The parser skips blank lines between requests, so no new request ever begins: the
    deadline counts from the first byte after the answer, and the connection is closed."""
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock).startswith("HTTP/1.1 200")
        began = time.monotonic()
        assert not trickles_for(sock, 10)
        assert time.monotonic() - began < 5  # --receive-timeout-s 1 here


def test_a_huge_head_gets_a_json_431(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        reply = read_reply(sock)
    assert reply.startswith("HTTP/1.1 431") and "request line and headers over 65536 bytes" in reply


def test_one_connection_over_the_cap_gets_a_json_503(server):
    _, port = server
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = read_reply(extra)
        assert reply.startswith("HTTP/1.1 503") and "retry-after: 1" in reply
        assert '"error":"over 64 HTTP connections open (--http-max-connections); retry"' in reply
    finally:
        for sock in held:
            sock.close()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        wait_for(lambda: client.get("/v2").status_code == 200, "service after the connections closed")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["json", "binary"])
def test_a_body_at_its_limit_never_stalls_the_event_loop(server, kind):
    grpc_port, port = server
    rows = 8192
    x = np.random.default_rng(0).random((rows, 784), dtype=np.float32)
    if kind == "json":
        rows = 440  # 440 x 784 values as text: just under the 4 MiB JSON limit
        body = orjson.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 784], "data": x[:rows]}]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        headers = {"content-type": "application/json"}
    else:
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [rows, 784],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "mean", "parameters": {"binary_data": True}}],
            }
        )
        body = header + x.tobytes()
        headers = {"inference-header-content-length": str(len(header))}
    with LoopProbe(f"127.0.0.1:{grpc_port}") as probe, httpx.Client(timeout=60) as client:
        reply = client.post(
            f"http://127.0.0.1:{port}/v2/models/vae_encoder/infer", content=body, headers=headers
        )
    assert reply.status_code == 200, reply.text[:200]
    print(f"{kind}: {len(body) / 1e6:.1f} MB, longest loop gap {probe.max_gap_s * 1e3:.0f} ms")
    assert probe.calls > 0
    assert probe.max_gap_s < LOOP_STALL_BOUND_S


def test_json_beyond_its_limit_is_refused_and_binary_is_the_way(server):
    _, port = server
    body = b'{"inputs": [' + b" " * (4 << 20) + b"]}"
    with httpx.Client(timeout=30) as client:
        reply = client.post(f"http://127.0.0.1:{port}/v2/models/vae_decoder/infer", content=body)
        assert reply.status_code == 413
        assert "4194304-byte JSON limit (binary tensor data" in reply.json()["error"]
        z = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [8192, 32], "data": [0.0] * 8192 * 32}]}
        reply = client.post(f"http://127.0.0.1:{port}/v2/models/vae_decoder/infer", json=z)
        assert reply.status_code == 413 and "ask for the outputs as binary data" in reply.json()["error"]
