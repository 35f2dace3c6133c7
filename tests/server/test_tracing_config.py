"""Tracing is configured by OpenTelemetry's own OTEL_* variables, and is off unless asked for."""

import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vae_serve.server.telemetry import tracing

OTEL = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture
def env(monkeypatch):
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    tracing.shutdown()


@pytest.mark.parametrize(
    ("variables", "exporters"),
    [
        ({}, []),  # off by default, unlike the SDK's own default (otlp)
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [GrpcExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, [HttpExporter]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, [GrpcExporter]),  # an endpoint alone
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            [HttpExporter],
        ),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, [ConsoleSpanExporter, GrpcExporter]),
    ],
)
def test_the_exporters_are_the_ones_the_variables_name(env, variables, exporters):
    for name, value in variables.items():
        env.setenv(name, value)
    assert tracing._exporter_classes() == exporters


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin-from-mars"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "smoke"},
    ],
)
def test_an_unknown_exporter_or_protocol_is_one_clear_error(env, variables):
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(tracing.TracingError, match="OTEL_"):
        tracing.check()


def test_the_service_is_vae_serve_unless_named_and_the_resource_says_which_process(env):
    tracing.configure(SimpleSpanProcessor(InMemorySpanExporter()))
    attributes = tracing._provider.resource.attributes
    assert attributes["service.name"] == "vae-serve" and isinstance(attributes["process.pid"], int)
    env.setenv("OTEL_SERVICE_NAME", "vae-blue")
    tracing.configure(SimpleSpanProcessor(InMemorySpanExporter()))
    assert tracing._provider.resource.attributes["service.name"] == "vae-blue"


def test_the_sampler_is_read_from_the_variables(env):
    env.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    tracing.configure(SimpleSpanProcessor(InMemorySpanExporter()))
    assert "0.25" in tracing._provider.sampler.get_description()


def test_the_command_refuses_an_unknown_exporter_in_one_line(env):
    env.setenv("OTEL_TRACES_EXPORTER", "nonesuch")
    done = subprocess.run(
        [sys.executable, "-m", "vae_serve.server.cli", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("vae-serve: error: tracing:") and "nonesuch" in line
