"""The HTTP port as an attacker uses it: slow senders, too many connections, huge bodies. Each is
refused or cut off, and everyone else is still served."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
from loop_probe import LOOP_STALL_BOUND_S, LoopProbe
from support import PATIENCE_S, read_reply, start_vae_serve_http, wait_for

# The bound on the event loop's longest pause during one hostile HTTP request: refusals cost a
# few milliseconds, a stall this guards against was 0.6-0.9 s per body.
HTTP_STALL_BOUND_S = 0.1


@pytest.fixture(scope="module")
def served():
    proc, grpc_port, http_port = start_vae_serve_http(
        "--receive-timeout-s", "1", "--http-max-connections", "64"
    )
    os.set_blocking(proc.stderr.fileno(), False)  # its log, read as far as it is written
    try:
        yield proc, grpc_port, http_port
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def server(served):
    return served[1:]


def serving(*flags: str) -> Iterator[tuple[int, int]]:
    """A server of its own for a fixture: its gRPC and HTTP ports, stopped after the module."""
    proc, grpc_port, http_port = start_vae_serve_http(*flags)
    try:
        yield grpc_port, http_port
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def patient():
    """A server whose receive deadline outlasts any test here: what a connection gives up is
    given to make room, never to the clock."""
    yield from serving("--receive-timeout-s", "60", "--http-max-connections", "64")


def logged(proc: subprocess.Popen) -> str:
    """What the server has logged since this was last called (a request's lines are written before
    its answer is sent)."""
    chunks = []
    while True:
        try:
            chunk = os.read(proc.stderr.fileno(), 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock`, reading what it had to say first: a blocking socket waits
    for that (within its timeout), a non-blocking one that is still open answers False."""
    try:
        while sock.recv(4096):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.timing
def test_a_slow_sender_gets_a_408_a_silent_one_is_closed_and_others_are_served(server):
    grpc_port, port = server
    slow = []
    with LoopProbe(f"127.0.0.1:{grpc_port}") as probe:
        for _ in range(8):  # headers trickled in
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
            slow.append(sock)
        for _ in range(8):  # bodies that never finish
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            slow.append(sock)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert client.get("/v2/health/ready").status_code == 200  # served while they wait
        for sock in slow:  # after --receive-timeout-s: an answer, then the connection closes
            reply = read_reply(sock)
            assert reply.startswith("HTTP/1.1 408") and "connection: close" in reply, reply
            assert "took over 1 s to arrive (--receive-timeout-s)" in reply
            assert closed_by_server(sock)
        assert all(closed_by_server(sock) for sock in silent)  # nothing asked, nothing to answer
    for sock in slow + silent:
        sock.close()
    assert probe.max_gap_s < HTTP_STALL_BOUND_S


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
    deadline counts from the first byte after the answer, and the connection is closed. (Each
    byte received cancels the keep-alive timer: nothing else would ever close it.)"""
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock).startswith("HTTP/1.1 200")
        assert not trickles_for(sock, PATIENCE_S)  # --receive-timeout-s 1 here


def test_a_huge_head_gets_a_json_431(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        reply = read_reply(sock)
    assert reply.startswith("HTTP/1.1 431") and "request line and headers over 65536 bytes" in reply


@pytest.mark.timing
def test_a_header_value_that_never_ends_gets_a_431_as_it_grows(server):
    """The parser hands a header value over only once it ends: the bytes of an unfinished head
    are counted as they arrive, so one endless value cannot grow the connection's memory."""
    grpc_port, port = server
    with LoopProbe(f"127.0.0.1:{grpc_port}") as probe:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 256 * 1024)  # no end of line
                reply = read_reply(sock)
            assert reply.startswith("HTTP/1.1 431") and "request line and headers over 65536 bytes" in reply
    assert probe.max_gap_s < HTTP_STALL_BOUND_S


@pytest.mark.timing
@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\n",  # a head that never ends
        b"POST /v1/decode HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b'content-length: 1000\r\n\r\n{"z":',  # a body that never ends
    ],
    ids=["nothing", "part of a head", "part of a body"],
)
def test_sockets_without_a_whole_request_give_way_to_a_client_with_one(patient, sent):
    """More sockets than the cap that never finish a request, all from one address (as behind a
    proxy): each new connection closes the oldest that owes no answer, so a request always gets in."""
    grpc_port, port = patient

    def hoard() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(sent)
        return sock

    held = [hoard() for _ in range(200)]  # cap 64
    try:
        with LoopProbe(f"127.0.0.1:{grpc_port}") as probe:
            for _ in range(20):
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                    assert client.get("/v2/health/ready").status_code == 200
                held.append(hoard())
        assert probe.max_gap_s < HTTP_STALL_BOUND_S
        for sock in held:
            sock.setblocking(False)
        # Which ones gave way depends on what the server had read of each (silent ones go first);
        # that all but the cap's worth did, does not.
        wait_for(
            lambda: sum(map(closed_by_server, held)) >= len(held) - 64,
            "the hoarders over the cap to be closed",
        )
    finally:
        for sock in held:
            sock.close()


@pytest.mark.slow
@pytest.mark.timing
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


@pytest.mark.timing
def test_json_beyond_its_limit_is_refused_and_binary_is_the_way(server):
    grpc_port, port = server
    body = b'{"inputs": [' + b" " * (4 << 20) + b"]}"
    with LoopProbe(f"127.0.0.1:{grpc_port}") as probe, httpx.Client(timeout=30) as client:
        reply = client.post(f"http://127.0.0.1:{port}/v2/models/vae_decoder/infer", content=body)
        assert reply.status_code == 413
        assert "4194304-byte JSON limit (binary tensor data" in reply.json()["error"]
        z = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [8192, 32], "data": [0.0] * 8192 * 32}]}
        reply = client.post(f"http://127.0.0.1:{port}/v2/models/vae_decoder/infer", json=z)
        assert reply.status_code == 413 and "ask for the outputs as binary data" in reply.json()["error"]
    assert probe.max_gap_s < HTTP_STALL_BOUND_S


def _form_post(boundary: str, body: bytes) -> bytes:
    head = (
        "POST /v1/encode HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


@pytest.mark.parametrize(
    ("boundary", "body"),
    [
        ("b" * 300, b"--" + b"b" * 300 + b"\r\n"),  # over python-multipart's own 256
        ("b" * 71, b"--" + b"b" * 71 + b"\r\n"),
        ("", b"--\r\n"),
        ("x", b"garbage, and no boundary anywhere"),
        ("x", b"--x\r\n" + b"H" * 8192 + b"\r\n"),  # one part header over python-multipart's limit
    ],
    ids=["300 characters", "71 characters", "empty", "garbage", "a huge part header"],
)
def test_a_malformed_form_is_a_400_in_one_line_and_logs_no_traceback(served, boundary, body):
    proc, _, port = served
    logged(proc)  # what earlier tests left
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_form_post(boundary, body))
        reply = read_reply(sock)
    head, _, text = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400"), reply[:300]
    assert "\n" not in text and set(orjson.loads(text)) == {"error"}
    assert "multipart form" in orjson.loads(text)["error"]
    assert logged(proc) == ""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def reset_by_server(sock: socket.socket) -> bool:
    """Whether the server has aborted this connection (a send fails), for a client that never reads."""
    try:
        sock.send(b"\r\n")
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.timing
def test_pipelined_requests_a_client_never_reads_hold_bounded_memory(served):
    """Five connections pipeline samples for half a second and never read an answer: the server
    parses at most a few requests ahead of each answer, and cuts off a client that reads nothing
    for --receive-timeout-s, so its memory stays bounded and it keeps serving."""
    proc, grpc_port, port = served
    request = b"GET /v1/sample?n=16 HTTP/1.1\r\nHost: x\r\n\r\n" * 64  # 150 kB of JSON each
    before = peak = rss_mb(proc.pid)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    try:
        with LoopProbe(f"127.0.0.1:{grpc_port}") as probe:
            for sock in clients:
                sock.setblocking(False)
            until = time.monotonic() + 0.5  # the attacker's half second of sending
            while time.monotonic() < until:
                for sock in clients:
                    with contextlib.suppress(BlockingIOError):
                        sock.send(request)

            def all_cut_off() -> bool:
                nonlocal peak
                peak = max(peak, rss_mb(proc.pid))
                return all(reset_by_server(sock) for sock in clients)

            wait_for(all_cut_off, "the server to cut off clients that read nothing")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                assert client.get("/v1/sample?n=4", headers={"accept": "image/png"}).status_code == 200
    finally:
        for sock in clients:
            sock.close()
    gap_ms = probe.max_gap_s * 1e3
    print(f"pipelined, never read: RSS {before:.0f} -> peak {peak:.0f} MB; loop gap {gap_ms:.0f} ms")
    assert peak - before < 128  # unbounded, it grew past 500 MB in 20 s
    assert probe.max_gap_s < LOOP_STALL_BOUND_S  # forty valid requests at once, not one refused


@pytest.mark.timing
@pytest.mark.parametrize(
    ("path", "make"),
    [
        ("/v1/decode", lambda: b'{"z":[' + b",".join([b"[]"] * 1_300_000) + b"]}"),
        ("/v1/decode", lambda: b'{"z":[' + b",".join([b"[0]"] * 1_000_000) + b"]}"),
        ("/v1/sample", lambda: b'{"mean":[' + b",".join([b"[0]"] * 1_000_000) + b"]}"),
        ("/v1/decode", lambda: b'{"z":[[' + b",".join([b'"a"'] * 1_000_000) + b"]]}"),
        ("/v1/decode", lambda: b'{"z":[[' + b",".join([b"0"] * 2_000_000) + b"]]}"),
        (
            "/v2/models/vae_decoder/infer",
            lambda: (
                b'{"inputs":[{"name":"z","datatype":"FP32","shape":[1,32],"data":['
                + b",".join([b"{}"] * 1_300_000)
                + b"]}]}"
            ),
        ),
        (
            "/v1/decode",
            lambda: b'{"z":[[0]],"x":{' + b",".join(b'"%d":1' % i for i in range(360_000)) + b"}}",
        ),
        (
            "/v2/models/vae_decoder/infer",
            lambda: (
                b'{"inputs":[{"name":"z","datatype":"FP32","shape":[1,32],"data":[0],"parameters":{'
                + b",".join(b'"%d":1' % i for i in range(360_000))
                + b"}}]}"
            ),
        ),
    ],
    ids=[
        "1.3M empty rows",
        "1M one-value rows",
        "a 1M-row mean",
        "1M strings",
        "2M values",
        "1.3M objects",
        "360k keys",
        "360k parameters",
    ],
)
def test_a_body_of_tiny_values_is_refused_before_it_is_parsed(server, path, make):
    """4 MB of `[],` is 1.3M lists to make, all of it holding the GIL: counted and refused first."""
    grpc_port, port = server
    body = make()  # built here, not in every worker's collection
    with LoopProbe(f"127.0.0.1:{grpc_port}") as probe, httpx.Client(timeout=30) as client:
        for _ in range(3):
            reply = client.post(
                f"http://127.0.0.1:{port}{path}", content=body, headers={"content-type": "application/json"}
            )
            assert reply.status_code == 413, reply.text[:300]
            assert "JSON" in reply.json()["error"] and "\n" not in reply.json()["error"]
    print(f"{len(body) / 1e6:.1f} MB of tiny values: longest loop gap {probe.max_gap_s * 1e3:.0f} ms")
    assert probe.calls > 0
    assert probe.max_gap_s < HTTP_STALL_BOUND_S


@pytest.fixture(scope="module")
def small():
    """A server with room for few connections, and patient deadlines."""
    yield from serving("--receive-timeout-s", "20", "--http-max-connections", "4")


def test_a_connection_opened_under_pressure_must_speak_sooner(small):
    """Over half the cap open: a newcomer that sends nothing is closed after about a second,
    not after the 20 s --receive-timeout-s that the first ones keep."""
    _, port = small
    calm = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    crowded = socket.create_connection(("127.0.0.1", port), timeout=10)  # the third of 4
    try:
        assert closed_by_server(crowded)  # within the socket's 10 s timeout
        for sock in calm:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # still open, nothing to read
    finally:
        for sock in [*calm, crowded]:
            sock.close()


def test_a_newcomer_is_refused_only_when_every_connection_is_being_answered(small):
    """Connections whose answers are stuck behind a client that does not read owe an answer: they
    never give way, so with all of them stuck a newcomer gets a JSON 503."""
    _, port = small
    # 2.3 MB of JSON an answer, six pipelined: more than the socket buffers hold, and cheap to make
    samples = b"GET /v1/sample?n=256 HTTP/1.1\r\nHost: x\r\n\r\n" * 6
    stuck = []
    for _ in range(4):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads little, then nothing
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(samples)
        assert sock.recv(1) == b"H"  # its requests arrived (a silent newcomer would give way)
        stuck.append(sock)
    try:

        def refused() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = read_reply(extra)
            return reply.startswith("HTTP/1.1 503")

        wait_for(refused, "a newcomer refused while every connection owes an answer")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = read_reply(extra)
        assert '"error":"over 4 HTTP connections are answering requests; retry"' in reply
        assert "retry-after: 1" in reply
    finally:
        for sock in stuck:
            sock.close()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        wait_for(lambda: client.get("/v2/health/live").status_code == 200, "service once they left")


def test_a_request_on_an_idle_connection_in_a_drain_is_answered_not_reset():
    proc, _, port = start_vae_serve_http("--drain-grace-s", "10")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
            kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(kept).startswith("HTTP/1.1 200")
            proc.send_signal(signal.SIGTERM)

            def port_closed() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except ConnectionRefusedError:
                    return True
                return False

            wait_for(port_closed, "the HTTP port to stop taking connections")
            body = orjson.dumps({"z": [[0.0] * 32]})
            kept.sendall(
                b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            reply = read_reply(kept)
        assert reply.startswith("HTTP/1.1 503"), reply[:200]
        assert "connection: close" in reply
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


def _raw(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


@pytest.mark.timing
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (_raw("GET /v2 HTTP/1.1\nHost: x\nX-Big: " + "a" * 100_000 + "\n"), 431),
        (
            _raw(
                "POST /v1/decode HTTP/1.1\nHost: x\nContent-Type: text/plain\nContent-Length: 9\n",
                b"{'z': []}",
            ),
            415,
        ),
        (
            _raw(
                "POST /v1/decode HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                f"Content-Length: {1 << 40}\n"
            ),
            413,
        ),
        (
            _raw("POST /v1/decode HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 1x\n"),
            400,
        ),
        (_raw("POST /v1/decode HTTP/1.1\nHost: x\nContent-Encoding: gzip\nContent-Length: 2\n", b"{}"), 400),
        (_form_post("b" * 300, b"--" + b"b" * 300 + b"\r\n"), 400),
        (_raw("GET /v1/sample?n=100000 HTTP/1.1\nHost: x\n"), 400),
        (_raw("GET /" + "a" * 60_000 + " HTTP/1.1\nHost: x\n"), 404),
        (b"\x16\x03\x01\x02\x00" + b"\x00" * 512, 400),  # a TLS hello to the plain port
    ],
    ids=[
        "huge head",
        "text body",
        "1 TiB declared",
        "bad length",
        "gzip",
        "long boundary",
        "huge n",
        "long path",
        "TLS",
    ],
)
def test_each_hostile_request_is_refused_in_one_line_while_the_loop_keeps_serving(server, raw, status):
    grpc_port, port = server
    with LoopProbe(f"127.0.0.1:{grpc_port}") as probe:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(raw)
                reply = read_reply(sock)
            head, _, text = reply.partition("\r\n\r\n")
            assert head.startswith(f"HTTP/1.1 {status}"), reply[:300]
            assert "\n" not in text and set(orjson.loads(text)) == {"error"}
    assert probe.max_gap_s < HTTP_STALL_BOUND_S
