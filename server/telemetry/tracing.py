"""OpenTelemetry traces: a span per call, with children for its time in the batcher's queue and for
the ONNX Runtime run that computed it.

Configured the standard way: the SDK reads the `OTEL_*` variables itself (`OTEL_TRACES_EXPORTER`,
`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`). Unlike the
SDK's own default, tracing is off unless `OTEL_TRACES_EXPORTER` names an exporter or an OTLP
endpoint variable is set. Off, `tracer` is None, and that is all a hot path checks: no context is
extracted and no span object is made.

The provider is the process's own (each worker makes its own after the fork, its pid in the
resource); it is not installed as OpenTelemetry's global one, so nothing else in the process is
traced by accident. A merged batch's ORT span is a child of its first sampled request's span and
links to every request it served: each sampled request's trace shows the run it waited for, and
no batch starts a trace of its own (a root span per batch would be sampled apart from its
requests and add a trace per run).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    get_current_span,
    set_span_in_context,
    use_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

__all__ = [
    "TracingError",
    "check",
    "compute_span",
    "configure",
    "extract",
    "queued",
    "shutdown",
    "tracer",
    "waited",
]

SERVICE = "vae-serve"  # OTEL_SERVICE_NAME's default here (the SDK's is "unknown_service")
# A caller's trace context is read only when plain-sized: version 00 of traceparent is 55 chars;
# W3C asks that at least 512 chars of tracestate be kept, and a longer one is dropped whole.
TRACE_HEADERS = {"traceparent": 256, "tracestate": 512}
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_W3C = TraceContextTextMapPropagator()
_OFF = contextlib.nullcontext()

tracer: Tracer | None = None  # None: tracing off
_provider: TracerProvider | None = None


class TracingError(Exception):
    """The OTEL_* variables ask for something this install cannot do (an unknown exporter)."""


def configure(processor: SpanProcessor | None = None) -> None:
    """This process's tracer, from the OTEL_* variables; or from `processor` (tests, in memory).
    Call once per process, after any fork."""
    global tracer, _provider
    shutdown()
    if _disabled():
        return
    try:
        processors = [processor] if processor is not None else [BatchSpanProcessor(e) for e in _exporters()]
    except TracingError:
        raise
    except Exception as exc:  # an exporter refusing its variables (a malformed endpoint, headers)
        raise TracingError(f"tracing: {exc} (check OTEL_EXPORTER_OTLP_*)") from None
    if not processors:
        return
    pid = os.getpid()
    resource = Resource.create({"process.pid": pid, "service.instance.id": f"{socket.gethostname()}:{pid}"})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    _provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # sampler: OTEL_TRACES_SAMPLER
    for each in processors:
        _provider.add_span_processor(each)
    tracer = _provider.get_tracer("vae_serve.server")


def check() -> None:
    """Raise TracingError now if the OTEL_* variables name an exporter this install lacks (the
    supervisor checks once, before its workers each make theirs)."""
    if not _disabled():
        _exporter_classes()


def _disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"  # the SDK's off switch


def _exporters() -> list[SpanExporter]:
    return [exporter() for exporter in _exporter_classes()]


def _exporter_classes() -> list[type[SpanExporter]]:
    """The exporters OTEL_TRACES_EXPORTER names, read as the SDK's own configurator reads it (OTLP's
    protocol from OTEL_EXPORTER_OTLP_PROTOCOL); OTLP when only an endpoint is set; else none."""
    named = bool(os.environ.get("OTEL_TRACES_EXPORTER"))
    if not named and not any(os.environ.get(variable) for variable in _ENDPOINTS):
        return []
    # The SDK's own configurator, imported only where tracing is asked for (40 ms of every start)
    from opentelemetry.sdk._configuration import (
        _get_exporter_entry_point,
        _get_exporter_names,
        _import_exporters,
    )

    try:
        names = _get_exporter_names("traces") if named else [_get_exporter_entry_point("otlp", "traces")]
        classes, _, _ = _import_exporters(names, [], [])
    except Exception as exc:  # the SDK's own RuntimeError: an unknown exporter or protocol
        raise TracingError(f"tracing: {exc} (check OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_*)") from None
    return list(classes.values())


def shutdown() -> None:
    """Export what is buffered and stop; the process's tracing is off after."""
    global tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    tracer = _provider = None


def extract(carrier: Mapping[str, str] | Iterable[tuple[str, object]] | None) -> Context:
    """The caller's W3C trace context (`traceparent`, `tracestate`) from HTTP headers or gRPC
    metadata (the first value of each key), each read only when plain-sized. An unusable one
    starts a new trace."""
    found: dict[str, str] = {}
    if isinstance(carrier, Mapping):
        pairs = ((name, carrier.get(name)) for name in TRACE_HEADERS)
    else:
        pairs = ((key, value) for key, value in carrier or () if key in TRACE_HEADERS)
    for name, value in pairs:
        if name not in found and isinstance(value, str):
            found[name] = value
    plain = {name: value for name, value in found.items() if len(value) <= TRACE_HEADERS[name]}
    return _W3C.extract(plain) if plain else Context()


def queued() -> tuple[SpanContext, int] | None:
    """Taken when a request joins a batcher's queue: its call's span and the time, for `waited`."""
    return None if tracer is None else (get_current_span().get_span_context(), time.time_ns())


def waited(
    mark: tuple[SpanContext, int],
    graph: str,
    rows: int,
    error: BaseException | None = None,
    *,
    model: str = "",
) -> None:
    """The span of a request's time in the queue, from `queued` until now, under its call's span;
    `model`: the model whose `graph` it waited for."""
    if tracer is None:
        return
    parent, began = mark
    attributes: dict[str, AttributeValue] = {"vae.model": model, "vae.graph": graph, "vae.rows": rows}
    span = tracer.start_span(
        "batcher.queue",
        set_span_in_context(NonRecordingSpan(parent)),
        attributes=attributes,
        start_time=began,
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def compute_span(
    graph: str,
    provider: str,
    rows: int,
    requests: Sequence[SpanContext] | None = None,
    *,
    model: str = "",
) -> AbstractContextManager[object]:
    """A block around one ORT run of `model`'s `graph`, its span: under the current call's span,
    or for a merged batch (`requests`: its calls' spans) under the first sampled of them, with a
    link to each. Tracing off: a shared no-op block."""
    if tracer is None:
        return _OFF
    context: Context | None = None
    links: Sequence[Link] = ()
    if requests:
        parent = next((r for r in requests if r.trace_flags.sampled), requests[0])
        context = set_span_in_context(NonRecordingSpan(parent))
        links = [Link(r) for r in requests if r.is_valid]
    attributes: dict[str, AttributeValue] = {
        "vae.model": model,
        "vae.graph": graph,
        "vae.batch.rows": rows,
        "vae.batch.requests": len(requests) if requests else 1,
        "vae.execution_provider": provider,
    }
    span = tracer.start_span("onnxruntime.run", context, SpanKind.INTERNAL, attributes, links)
    return use_span(span, end_on_exit=True)
