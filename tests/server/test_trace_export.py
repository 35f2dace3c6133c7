"""End to end: a `vae-serve` process exporting its spans over OTLP to a real receiver in this test
process (opentelemetry-proto's TraceService on a gRPC port), logging JSON lines with an access log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from concurrent import futures

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from support import DEFAULT_VERSION, REPOSITORY, free_port, start_server_ports, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.tensor import to_tensor

pytestmark = pytest.mark.slow

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span it is sent, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict, object]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_hex: str) -> list:
        with self._lock:
            return [span for _, span in self.spans if span.trace_id.hex() == trace_hex]


class Served:
    """The server process; its stderr lines are collected as they come (a full pipe would stall it)."""

    def __init__(self, receiver_port: int) -> None:
        env = {
            **os.environ,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # milliseconds: the batch span processor's, read by the SDK
        }
        args = ["-m", "vae_serve.server.cli", "--model-repository", str(REPOSITORY), "--host", "127.0.0.1"]
        args += ["--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0"]
        args += ["--http-host", "127.0.0.1", "--http-port", "0", "--log-format", "json", "--access-log"]
        pattern = r"serving on [\d.]+:(\d+).*HTTP on [\d.]+:(\d+)"
        self.proc, (self.port, self.http_port) = start_server_ports(args, pattern, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]

    def access(self, request_id: str) -> list[dict]:
        return [
            r for r in self.records() if r["logger"] == "vae_serve.access" and r["request_id"] == request_id
        ]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)


@pytest.fixture(scope="module")
def receiver():
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    servicer.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer
    server.stop(0)


@pytest.fixture(scope="module")
def served(receiver):
    process = Served(receiver.port)
    yield process
    process.stop()
    assert "stopped" in {r["message"] for r in process.records()}  # to the last line, JSON all through


@pytest.fixture(scope="module")
def stub(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield vae_pb2_grpc.VAEServiceStub(channel)


def decode(stub, metadata=(), rows=2):
    return stub.Decode(
        vae_pb2.DecodeRequest(z=to_tensor(np.zeros((rows, 32), np.float32))), metadata=metadata
    )


def test_a_traced_decode_reaches_the_receiver_with_its_queue_and_ort_children(receiver, stub):
    decode(stub, (("traceparent", TRACEPARENT), ("x-request-id", "e2e-traced")), rows=3)
    wanted = {"Decode", "batcher.queue", "onnxruntime.run"}
    wait_for(lambda: wanted <= {s.name for s in receiver.in_trace(TRACE)}, "the call's three spans")
    spans = {s.name: s for s in receiver.in_trace(TRACE)}
    call = spans["Decode"]
    assert call.parent_span_id.hex() == PARENT and call.kind == call.SPAN_KIND_SERVER
    for child in ("batcher.queue", "onnxruntime.run"):
        assert spans[child].parent_span_id == call.span_id
    resource = next(r for r, s in receiver.spans if s.trace_id.hex() == TRACE)
    assert resource["service.name"].string_value == "vae-serve"
    assert resource["process.pid"].int_value > 0


def test_every_log_line_is_a_json_object_with_the_standard_fields(served, stub):
    decode(stub)
    records = served.records()  # json.loads raises on any line that is not JSON
    assert records
    for record in records:
        assert {"timestamp", "level", "logger", "message", "process"} <= set(record), record
    assert "vae_serve.access" in {r["logger"] for r in records}


def test_each_request_gets_one_access_line_grpc_and_http(served, stub):
    for i in range(3):
        decode(stub, (("x-request-id", f"grpc-{i}"),))
    with pytest.raises(grpc.RpcError):
        stub.Decode(vae_pb2.DecodeRequest(), metadata=(("x-request-id", "grpc-bad"),))
    url = f"http://127.0.0.1:{served.http_port}/v1/decode"
    for i in range(2):
        reply = httpx.post(
            url, json={"z": [[0.0] * 32] * 4}, headers={"x-request-id": f"http-{i}"}, timeout=10
        )
        assert reply.status_code == 200 and reply.headers["x-request-id"] == f"http-{i}"
    ids = [f"grpc-{i}" for i in range(3)] + ["grpc-bad", "http-0", "http-1"]
    wait_for(lambda: all(served.access(i) for i in ids), "an access line for each request")
    for request_id in ids:
        (line,) = served.access(request_id)  # exactly one
        assert {"method", "model", "version", "rows", "status", "duration_ms", "peer"} <= set(line)
    (bad,) = served.access("grpc-bad")
    assert (bad["method"], bad["status"]) == ("Decode", "INVALID_ARGUMENT")
    (good,) = served.access("grpc-0")
    assert (good["model"], good["version"], good["rows"], good["status"]) == (
        "fashion-vae",
        DEFAULT_VERSION,
        2,
        "OK",
    )
    (http,) = served.access("http-1")
    assert (http["method"], http["http_status"], http["rows"]) == ("http.Decode", 200, 4)


def test_a_traced_requests_lines_carry_its_trace_id(served, stub):
    trace = "5" * 32
    decode(stub, (("traceparent", f"00-{trace}-{PARENT}-01"), ("x-request-id", "carries-trace")))
    wait_for(lambda: served.access("carries-trace"), "the access line")
    (line,) = served.access("carries-trace")
    assert line["trace_id"] == trace and len(line["span_id"]) == 16


def test_hostile_request_ids_are_replaced_and_never_written(served, stub):
    url = f"http://127.0.0.1:{served.http_port}/v1/model"
    reply = httpx.get(url, headers={"x-request-id": "z" * 10_000, "traceparent": "0" * 9_000}, timeout=10)
    assert reply.status_code == 200 and len(reply.headers["x-request-id"]) == 32
    _, call = stub.GetModelInfo.with_call(
        vae_pb2.GetModelInfoRequest(), metadata=(("x-request-id", "evil id; rm -rf /"),), timeout=10
    )
    given = dict(call.trailing_metadata())["x-request-id"]
    assert len(given) == 32
    wait_for(
        lambda: served.access(given) and served.access(reply.headers["x-request-id"]), "both access lines"
    )
    # Control characters, which httpx will not send.
    with socket.create_connection(("127.0.0.1", served.http_port), timeout=10) as raw:
        raw.sendall(
            b"GET /v1/model HTTP/1.1\r\nhost: x\r\nx-request-id: ctl\x1b[31m\x7fid\r\n"
            b"traceparent: 00-\x01\x02\r\nconnection: close\r\n\r\n"
        )
        answer = b"".join(iter(lambda: raw.recv(65536), b""))
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400"))  # served with its own id, or refused
    decode(stub, (("x-request-id", "after-the-attack"),))  # still serving
    wait_for(lambda: served.access("after-the-attack"), "the next call's access line")
    text = "".join(served.lines)
    assert "z" * 200 not in text and "evil" not in text and "\x1b" not in text and "\x7f" not in text


def test_each_worker_traces_with_its_own_provider(receiver):
    """--workers 2: the supervisor forks before any tracer exists; each worker makes its own."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}  # alone: otlp
    env["OTEL_BSP_SCHEDULE_DELAY"] = "50"
    ports = [str(free_port()) for _ in range(3)]
    args = ["-m", "vae_serve.server.cli", "--model-repository", str(REPOSITORY), "--host", "127.0.0.1"]
    args += ["--port", ports[0], "--metrics-host", "127.0.0.1", "--metrics-port", ports[1]]
    args += ["--http-host", "127.0.0.1", "--http-port", ports[2], "--workers", "2"]
    proc, _ = start_server_ports(args, r"all (2) workers ready", env=env)
    trace = "7" * 32
    try:
        own_pool = [("grpc.use_local_subchannel_pool", 1)]  # else channels may share one connection
        for _ in range(20):  # a connection each: the kernel spreads them over both workers
            with grpc.insecure_channel(f"127.0.0.1:{ports[0]}", options=own_pool) as channel:
                decode(vae_pb2_grpc.VAEServiceStub(channel), (("traceparent", f"00-{trace}-{PARENT}-01"),))
        calls = lambda: {s.span_id for s in receiver.in_trace(trace) if s.name == "Decode"}  # noqa: E731
        wait_for(lambda: len(calls()) == 20, "the 20 calls' spans")  # by id: a retried export repeats some
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    pids = {r["process.pid"].int_value for r, s in receiver.spans if s.trace_id.hex() == trace}
    assert len(pids) == 2 and proc.pid not in pids
