"""Every Prometheus metric the server exports, on a registry of its own (tests make their own).

Names follow Prometheus conventions (`vae_serve_` prefix, base units, `_total` counters);
latencies are histograms, so p50/p99 aggregate across replicas. With worker processes,
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before it is imported)
writes each worker's values to files that the supervisor sums on the one metrics port.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    multiprocess,
)

__all__ = ["LATENCY_BUCKETS", "Metrics", "multiprocess_registry"]

# 50 us .. 10 s: batch-1 ORT runs sit at the bottom, big batches and queueing at the top.
LATENCY_BUCKETS = (
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._served_labels: dict[str, tuple[str, str, str]] = {}  # by model: its info labels now
        self._request_children: dict[tuple[str, str, str], tuple[Histogram, Counter]] = {}
        self._in_flight_children: dict[str, Gauge] = {}
        self.request_duration = Histogram(
            "vae_serve_request_duration_seconds",
            "RPC latency in the server, by method, status code and model (empty: none resolved).",
            ["method", "code", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "vae_serve_requests_total",
            "RPCs answered, by method, status code and model (empty: none resolved).",
            ["method", "code", "model"],
            registry=r,
        )
        # By method alone: a call is counted from its arrival, before it names its model.
        self.in_flight = Gauge(
            "vae_serve_requests_in_flight",
            "RPCs being handled now.",
            ["method"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.compute_duration = Histogram(
            "vae_serve_inference_duration_seconds",
            "ONNX Runtime run time, by model, graph and model version.",
            ["model", "graph", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vae_serve_batch_size_rows",
            "Rows per ONNX Runtime run, by model, graph and model version.",
            ["model", "graph", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "vae_serve_queue_duration_seconds",
            "Time a request waited in the batcher's queue, by model, graph and model version.",
            ["model", "graph", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_rows = Gauge(
            "vae_serve_queue_rows",
            "Rows waiting in the batcher's queue, by model and graph.",
            ["model", "graph"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "vae_serve_rejected_total",
            "Requests shed by the batcher, by model, graph and reason.",
            ["model", "graph", "reason"],
            registry=r,
        )
        # Triton's per-model statistics (statistics.py reads them back), beside the run metrics above.
        self.graph_requests = Summary(
            "vae_serve_graph_request_duration_seconds",
            "Requests a graph's runner answered, and their time from admission to result (queue and "
            "compute), by model, graph, model version and result (success, fail).",
            ["model", "graph", "version", "result"],
            registry=r,
        )
        self.shared_compute = Counter(
            "vae_serve_shared_compute_seconds_total",
            "ONNX Runtime time counted again for each request past the first that a run served (k "
            "requests: k-1 times its duration); added to the run time, Triton's per-request "
            "compute_infer. By model, graph and model version.",
            ["model", "graph", "version"],
            registry=r,
        )
        self.last_run = Gauge(
            "vae_serve_graph_last_run_timestamp_seconds",
            "When a graph's last ONNX Runtime run ended (Unix time), by model, graph and model version.",
            ["model", "graph", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_loads = Counter(
            "vae_serve_model_loads_total",
            "New model versions found, by result (loaded, rejected).",
            ["result"],
            registry=r,
        )
        self.model_info = Gauge(
            "vae_serve_model_info",
            "1 for each model's version being served (the latest), 0 for the ones it replaced.",
            ["name", "version", "execution_provider"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def in_flight_for(self, method: str) -> Gauge:
        """The in-flight gauge of one RPC method (cached: looked up on every request)."""
        child = self._in_flight_children.get(method)
        if child is None:
            child = self._in_flight_children[method] = self.in_flight.labels(method)
        return child

    def record_request(
        self,
        method: str,
        code: str,
        seconds: float,
        exemplar: dict[str, str] | None = None,
        model: str = "",
    ) -> None:
        """Latency and count of one finished RPC (label children cached: this is the hot path).
        `exemplar`: a sampled call's `{"trace_id": ...}`, kept on its latency bucket and shown in
        the OpenMetrics format only (multiprocess mode drops exemplars: single-process servers only).
        `model`: the served model the call resolved, "" for none (never a name a client sent)."""
        key = (method, code, model)
        children = self._request_children.get(key)
        if children is None:
            children = (self.request_duration.labels(*key), self.requests.labels(*key))
            self._request_children[key] = children
        children[0].observe(seconds, exemplar)
        children[1].inc()

    def set_model(self, name: str, version: str, provider: str) -> None:
        """1 for the version of model `name` now served, 0 for the one before (clear() is
        unsupported across processes)."""
        before = self._served_labels.get(name)
        if before is not None:
            self.model_info.labels(*before).set(0)
        self._served_labels[name] = (name, version, provider)
        self.model_info.labels(name, version, provider).set(1)


def multiprocess_registry() -> CollectorRegistry:
    """A registry that sums what every worker process wrote (PROMETHEUS_MULTIPROC_DIR)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
