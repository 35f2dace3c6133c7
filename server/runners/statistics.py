"""Triton's per-model statistics (its ModelStatistics extension), kept as Prometheus metrics.

They are recorded where the time is already measured, so a request costs one more observation
(`CountedRunner`: success or fail, admission to result) and a run one more (runner.TimedGraph:
when it ended; a run that served several requests also counts its time again for each request
past the first); the run and queue histograms already there supply execution count, rows,
compute and queue time. Kept as metrics, they are merged across
`--workers` processes like every other metric: `graph_statistics` reads them back from a
registry (with workers, every worker's files: file I/O, so call it off the event loop).

Every run of a graph counts, whatever the front end: the native Encode, Decode and Sample of a
model run the same graphs as OIP's `<model>_encoder` and `<model>_decoder`. Counts are kept per
model, graph and version, since the process (with workers, the supervisor) started.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry

from vae_serve.server.telemetry.metrics import Metrics

from .runner import Runner

__all__ = ["CountedRunner", "GraphStatistics", "graph_statistics"]


class CountedRunner:
    """A runner with Triton's request counts: each request ends in success or fail, with its time
    from admission to result (queue and compute; a shed or late request fails at once)."""

    def __init__(self, runner: Runner, metrics: Metrics, label: str, version: str, model: str = "") -> None:
        self.runner = runner
        self._success = metrics.graph_requests.labels(model, label, version, "success")
        self._fail = metrics.graph_requests.labels(model, label, version, "fail")

    async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        began = time.perf_counter()
        try:
            outputs = await self.runner.run(x, deadline)
        except BaseException:  # cancelled included: the request got no answer
            self._fail.observe(time.perf_counter() - began)
            raise
        self._success.observe(time.perf_counter() - began)
        return outputs

    def close(self) -> None:
        self.runner.close()


@dataclass
class GraphStatistics:
    """One graph of a model version, in seconds as recorded; `triton` gives Triton's shape."""

    successes: float = 0.0
    success_s: float = 0.0
    failures: float = 0.0
    fail_s: float = 0.0
    queue_s: float = 0.0
    run_s: float = 0.0  # each run's time, once
    shared_s: float = 0.0  # each run's time again for each request past its first
    runs: float = 0.0
    rows: float = 0.0
    last_run: float = 0.0  # Unix time; 0: never

    def triton(self, name: str, version: str) -> dict[str, object]:
        """Triton's ModelStatistics, in its JSON shape (counts and nanoseconds as integers).

        ONNX Runtime binds inputs and outputs inside its run, so compute_input and compute_output
        take no time of their own; the queue is the batcher's (none without batching). As in
        Triton, queue and compute count the successful requests."""

        def duration(count: float, seconds: float) -> dict[str, int]:
            return {"count": round(count), "ns": round(seconds * 1e9)}

        done = self.successes
        return {
            "name": name,
            "version": version,
            "last_inference": round(self.last_run * 1e3),
            "inference_count": round(self.rows),
            "execution_count": round(self.runs),
            "inference_stats": {
                "success": duration(done, self.success_s),
                "fail": duration(self.failures, self.fail_s),
                "queue": duration(done, self.queue_s),
                "compute_input": duration(done, 0.0),
                "compute_infer": duration(done, self.run_s + self.shared_s),
                "compute_output": duration(done, 0.0),
                "cache_hit": duration(0, 0.0),
                "cache_miss": duration(0, 0.0),
            },
            "batch_stats": [],
        }


# sample name -> the GraphStatistics field it adds to (with `result` for the request summary)
_FIELDS = {
    ("vae_serve_graph_request_duration_seconds_count", "success"): "successes",
    ("vae_serve_graph_request_duration_seconds_sum", "success"): "success_s",
    ("vae_serve_graph_request_duration_seconds_count", "fail"): "failures",
    ("vae_serve_graph_request_duration_seconds_sum", "fail"): "fail_s",
    ("vae_serve_queue_duration_seconds_sum", None): "queue_s",
    ("vae_serve_inference_duration_seconds_sum", None): "run_s",
    ("vae_serve_shared_compute_seconds_total", None): "shared_s",
    ("vae_serve_inference_duration_seconds_count", None): "runs",
    ("vae_serve_batch_size_rows_sum", None): "rows",
}
_LAST_RUN = "vae_serve_graph_last_run_timestamp_seconds"


def graph_statistics(registry: CollectorRegistry) -> dict[tuple[str, str, str], GraphStatistics]:
    """(model, graph, version) -> its statistics, summed over every worker the registry reads."""
    found: dict[tuple[str, str, str], GraphStatistics] = defaultdict(GraphStatistics)
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "graph" not in labels or "version" not in labels:
                continue
            key = (labels["model"], labels["graph"], labels["version"])
            if sample.name == _LAST_RUN:
                found[key].last_run = max(found[key].last_run, sample.value)
                continue
            name = _FIELDS.get((sample.name, labels.get("result")))
            if name is not None:
                stats = found[key]
                setattr(stats, name, getattr(stats, name) + sample.value)
    return dict(found)
