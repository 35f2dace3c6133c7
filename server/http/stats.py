"""`GET /v1/stats`: request rate and latency per method, from the server's own histograms, for the
playground and for people who do not run Prometheus.

Figures are over a window: the time since the oldest snapshot of the last minute (snapshots are
taken when stats are asked for, at most one every MIN_INTERVAL_S, so asking often costs little).
Quantiles are read from the histogram's buckets as Prometheus' `histogram_quantile` reads them
(linear within a bucket). With workers the registry reads every worker's files (multiprocess
mode), so the figures cover the whole server; reading them is file I/O, done off the event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

__all__ = ["Stats", "quantile"]

WINDOW_S = 60.0
MIN_INTERVAL_S = 0.5
KEEP = 256  # snapshots: more than a minute's worth at MIN_INTERVAL_S


@dataclass
class _Snapshot:
    at: float
    counts: dict[str, float] = field(default_factory=dict)  # requests per method
    errors: dict[str, float] = field(default_factory=dict)  # of them, not OK
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # method -> le -> cumulative


def _read(registry: CollectorRegistry) -> _Snapshot:
    snapshot = _Snapshot(time.monotonic())
    counts: dict[str, float] = defaultdict(float)
    errors: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        for sample in family.samples:
            method = sample.labels.get("method")
            if method is None:
                continue
            if sample.name == "vae_serve_requests_total":
                counts[method] += sample.value
                if sample.labels.get("code") != "OK":
                    errors[method] += sample.value
            elif sample.name == "vae_serve_request_duration_seconds_bucket":
                buckets[method][float(sample.labels["le"])] += sample.value
    snapshot.counts, snapshot.errors = dict(counts), dict(errors)
    snapshot.buckets = {method: dict(b) for method, b in buckets.items()}
    return snapshot


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """The q-quantile of a histogram given as {upper bound: cumulative count}; None if empty."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound, as Prometheus answers
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


class Stats:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._snapshots: deque[_Snapshot] = deque(maxlen=KEEP)
        self._lock = asyncio.Lock()

    async def report(self) -> dict[str, Any]:
        async with self._lock:  # one collection at a time, however many ask
            now = time.monotonic()
            if not self._snapshots or now - self._snapshots[-1].at >= MIN_INTERVAL_S:
                self._snapshots.append(await asyncio.to_thread(_read, self.registry))
            latest = self._snapshots[-1]
            while len(self._snapshots) > 2 and latest.at - self._snapshots[1].at >= WINDOW_S:
                self._snapshots.popleft()
            oldest = self._snapshots[0]
        return _compare(oldest, latest)


def _compare(old: _Snapshot, new: _Snapshot) -> dict[str, Any]:
    span = new.at - old.at
    methods = {}
    for method, count in sorted(new.counts.items()):
        done = count - old.counts.get(method, 0.0) if span > 0 else count
        before = old.buckets.get(method, {}) if span > 0 else {}
        window = {le: c - before.get(le, 0.0) for le, c in new.buckets.get(method, {}).items()}
        p50, p99 = quantile(0.5, window), quantile(0.99, window)
        failed = new.errors.get(method, 0.0) - (old.errors.get(method, 0.0) if span > 0 else 0.0)
        methods[method] = {
            "requests": done,
            "per_second": done / span if span > 0 else None,
            "errors": failed,
            "p50_ms": None if p50 is None else p50 * 1e3,
            "p99_ms": None if p99 is None else p99 * 1e3,
        }
    return {"window_s": span, "methods": methods}
