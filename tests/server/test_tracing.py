"""Traces: a span per call (gRPC and HTTP) in the caller's trace, with its queue and ORT children;
merged batches link to their requests; exemplars; off by default, and hostile trace headers."""

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, format_trace_id
from support import DEFAULT_VERSION, REPOSITORY, RunningServer, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.models.model import load_model
from vae_serve.server.models.repository import resolve
from vae_serve.server.runners.batching import BatchingRunner
from vae_serve.server.runners.runner import InlineRunner, TimedGraph
from vae_serve.server.settings import BatchingSettings
from vae_serve.server.telemetry import tracing
from vae_serve.server.telemetry.metrics import Metrics
from vae_serve.tensor import to_tensor

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture(scope="module")
def server():
    running = RunningServer(http_host="127.0.0.1", http_port=0)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield vae_pb2_grpc.VAEServiceStub(channel)


def decode(stub, metadata=(), rows=2):
    z = to_tensor(np.zeros((rows, 32), np.float32))
    return stub.Decode(vae_pb2.DecodeRequest(z=z), metadata=metadata, timeout=10)


def named(exporter, name):
    return [s for s in exporter.get_finished_spans() if s.name == name]


def the_call_and_its_children(exporter, name):
    wait_for(lambda: named(exporter, name), f"a {name} span")
    (call,) = named(exporter, name)
    children = [
        s for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == call.context.span_id
    ]
    return call, {s.name: s for s in children}


def test_a_decode_continues_the_callers_trace_with_queue_and_ort_children(spans, stub):
    decode(stub, (("traceparent", TRACEPARENT), ("x-request-id", "traced-1")), rows=3)
    call, children = the_call_and_its_children(spans, "Decode")
    assert format_trace_id(call.context.trace_id) == TRACE
    assert call.parent.span_id == int(PARENT, 16) and call.kind is SpanKind.SERVER
    attributes = call.attributes
    assert attributes["vae.model"] == "fashion-vae" and attributes["vae.model_version"] == DEFAULT_VERSION
    assert attributes["vae.rows"] == 3 and attributes["rpc.grpc.status_code"] == 0
    assert attributes["vae.request_id"] == "traced-1" and attributes["network.peer.address"].startswith("ipv")
    assert set(children) == {"batcher.queue", "onnxruntime.run"}
    run = children["onnxruntime.run"].attributes
    assert run["vae.graph"] == "decoder" and run["vae.batch.rows"] == 3
    assert run["vae.execution_provider"] == "CPUExecutionProvider"
    queue = children["batcher.queue"]
    assert queue.start_time >= call.start_time and queue.end_time <= children["onnxruntime.run"].start_time


def test_without_a_traceparent_a_call_starts_its_own_trace(spans, stub):
    decode(stub)
    call, children = the_call_and_its_children(spans, "Decode")
    assert call.parent is None and set(children) == {"batcher.queue", "onnxruntime.run"}


def test_a_failed_call_says_its_code(spans, stub):
    with pytest.raises(grpc.RpcError):
        stub.Decode(vae_pb2.DecodeRequest(), timeout=10)  # z missing: INVALID_ARGUMENT
    wait_for(lambda: named(spans, "Decode"), "a Decode span")
    (call,) = named(spans, "Decode")
    assert call.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_an_unsampled_caller_is_not_recorded(spans, stub):
    decode(stub, (("traceparent", f"00-{'1' * 32}-{PARENT}-00"),))
    decode(stub)  # sampled: it is exported, and after the other
    wait_for(lambda: named(spans, "Decode"), "a Decode span")
    assert all(format_trace_id(s.context.trace_id) != "1" * 32 for s in spans.get_finished_spans())


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-" + "f" * 1000,
        "garbage",
        f"00-{'0' * 32}-{PARENT}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"{TRACEPARENT}-x",
    ],
)
def test_a_hostile_traceparent_starts_a_new_trace_and_the_call_succeeds(spans, stub, traceparent):
    decode(stub, (("traceparent", traceparent), ("tracestate", "k=" + "v" * 600)))
    call, _ = the_call_and_its_children(spans, "Decode")
    assert call.parent is None and format_trace_id(call.context.trace_id) != TRACE


def test_an_http_call_is_traced_too(spans, server):
    url = f"http://127.0.0.1:{server.server.http_port}/v1/decode"
    reply = httpx.post(url, json={"z": [[0.0] * 32]}, headers={"traceparent": TRACEPARENT}, timeout=10)
    assert reply.status_code == 200
    call, children = the_call_and_its_children(spans, "http.Decode")
    assert format_trace_id(call.context.trace_id) == TRACE and call.attributes["rpc.system"] == "http"
    assert call.attributes["http.response.status_code"] == 200 and call.attributes["vae.rows"] == 1
    assert set(children) == {"batcher.queue", "onnxruntime.run"}


def test_the_latency_histogram_carries_a_sampled_calls_trace_id(spans, stub, server):
    decode(stub, (("traceparent", TRACEPARENT),))
    openmetrics = httpx.get(
        server.metrics_url, headers={"accept": "application/openmetrics-text"}, timeout=10
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    lines = [
        line
        for line in openmetrics.text.splitlines()
        if line.startswith("vae_serve_request_duration_seconds_bucket{") and 'method="Decode"' in line
    ]
    assert any(f'# {{trace_id="{TRACE}"}}' in line for line in lines), lines
    plain = httpx.get(server.metrics_url, timeout=10).text  # the classic format has no exemplars
    assert "trace_id" not in plain


def test_tracing_off_makes_no_spans(stub):
    assert tracing.tracer is None
    assert tracing.queued() is None
    decode(stub, (("traceparent", TRACEPARENT),))  # nothing to record into; the call still succeeds


def test_a_merged_batch_runs_under_its_first_sampled_request_and_links_to_all(spans):
    model = load_model(resolve(REPOSITORY, "fashion-vae"), "cpu", 1)
    metrics = Metrics()
    waits = BatchingSettings(queue_delay_policy="fixed", max_queue_delay_us=200_000)  # for all three
    runner = BatchingRunner(TimedGraph(model.decoder, "decoder", metrics, model.version), metrics, waits)
    callers = TracerProvider().get_tracer("callers")  # not the server's: their spans are not exported

    async def request(index: int) -> None:
        if index == 0:  # a call with no span: its link would be invalid, so it gets none
            await runner.run(np.full((1, 32), index, np.float32))
            return
        with callers.start_as_current_span(f"caller-{index}"):
            await runner.run(np.full((1, 32), index, np.float32))

    async def merged() -> None:
        await asyncio.gather(*(request(i) for i in range(3)))

    try:
        asyncio.run(merged())
    finally:
        runner.close()
    (run,) = named(spans, "onnxruntime.run")
    assert run.attributes["vae.batch.rows"] == 3 and run.attributes["vae.batch.requests"] == 3
    assert len(named(spans, "batcher.queue")) == 3
    assert len(run.links) == 2 and all(link.context.trace_flags.sampled for link in run.links)
    assert run.parent.span_id == run.links[0].context.span_id  # the first sampled request
    assert run.context.trace_id == run.links[0].context.trace_id


def test_an_unbatched_run_is_a_child_of_its_call(spans):
    model = load_model(resolve(REPOSITORY, "fashion-vae"), "cpu", 1)
    metrics = Metrics()
    runner = InlineRunner(
        TimedGraph(model.decoder, "decoder", metrics, model.version), metrics, BatchingSettings()
    )
    with tracing.tracer.start_as_current_span("call") as call:
        asyncio.run(runner.run(np.zeros((2, 32), np.float32)))
    runner.close()
    (run,) = named(spans, "onnxruntime.run")
    assert run.parent.span_id == call.get_span_context().span_id and run.attributes["vae.batch.rows"] == 2
    assert not named(spans, "batcher.queue")
