"""Every Prometheus metric the server exports, on a registry of its own (tests make their own).

Names follow Prometheus conventions (`vae_serve_` prefix, base units, `_total` counters);
latencies are histograms, so p50/p99 aggregate across replicas.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["LATENCY_BUCKETS", "Metrics", "serve_metrics"]

# 50 us .. 10 s: batch-1 ORT runs sit at the bottom, big batches and queueing at the top.
LATENCY_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "vae_serve_request_duration_seconds", "RPC latency in the server, by method and status code.",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "vae_serve_requests_total",
            "RPCs answered, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "vae_serve_requests_in_flight", "RPCs being handled now.", ["method"], registry=r
        )
        self.compute_duration = Histogram(
            "vae_serve_inference_duration_seconds", "ONNX Runtime run time, by graph.",
            ["graph"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "vae_serve_batch_size_rows", "Rows per ONNX Runtime run, by graph.",
            ["graph"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "vae_serve_model_info", "1 for the model version being served.",
            ["name", "version", "execution_provider"], registry=r,
        )  # fmt: skip

    def set_model(self, name: str, version: str, provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, provider).set(1)


def serve_metrics(metrics: Metrics, host: str, port: int) -> WSGIServer:
    """Serve /metrics from a daemon thread; `.server_address` has the port really bound."""
    server, _thread = start_http_server(port, host, registry=metrics.registry)
    return server
