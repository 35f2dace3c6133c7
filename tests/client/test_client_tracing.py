"""The clients continue their caller's trace: the active OpenTelemetry span's, or vae-client's
TRACEPARENT; without one they send no trace context, and they never need OpenTelemetry."""

import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_trace_id
from support import wait_for

from vae_serve.client import AsyncVaeClient, VaeClient

TRACE = "2" * 32
TRACEPARENT = f"00-{TRACE}-{'3' * 16}-01"


@pytest.fixture(scope="module")
def callers():
    return TracerProvider().get_tracer("caller")  # the caller's own tracing, not the server's


def server_span(exporter, name):
    wait_for(lambda: any(s.name == name for s in exporter.get_finished_spans()), f"a {name} span")
    return next(s for s in exporter.get_finished_spans() if s.name == name)


def test_a_call_inside_the_callers_span_continues_its_trace(running, spans, callers):
    with VaeClient(running.target) as client, callers.start_as_current_span("caller") as caller:
        client.decode(np.zeros((1, 32), np.float32))
    decode = server_span(spans, "Decode")
    assert decode.context.trace_id == caller.get_span_context().trace_id
    assert decode.parent.span_id == caller.get_span_context().span_id


def test_a_call_outside_any_span_sends_no_trace_context(running, spans):
    with VaeClient(running.target) as client:
        client.decode(np.zeros((1, 32), np.float32))
    assert server_span(spans, "Decode").parent is None


def test_the_asyncio_client_continues_the_callers_trace(running, spans, callers):
    async def call() -> int:
        async with AsyncVaeClient(running.target) as client:
            with callers.start_as_current_span("caller") as caller:
                await client.decode(np.zeros((1, 32), np.float32))
                return caller.get_span_context().trace_id

    trace_id = asyncio.run(call())
    assert server_span(spans, "Decode").context.trace_id == trace_id


def test_vae_client_continues_the_trace_in_traceparent(running, spans):
    env = {**os.environ, "TRACEPARENT": TRACEPARENT}
    done = subprocess.run(
        [sys.executable, "-m", "vae_serve.client.cli", "--target", running.target, "info"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert format_trace_id(server_span(spans, "GetModelInfo").context.trace_id) == TRACE


def test_a_malformed_traceparent_is_refused_by_the_client():
    with pytest.raises(ValueError, match="traceparent"):
        VaeClient("127.0.0.1:1", traceparent="00-not-a-trace")


def test_the_client_imports_no_opentelemetry():
    code = "import sys, vae_serve.client; sys.exit('opentelemetry' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
