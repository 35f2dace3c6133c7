"""How a request's rows reach ONNX Runtime. A runner is what the data plane awaits for one graph.

`InlineRunner` (batching off, `--max-batch-size 1`) calls ORT straight from the handler: no
queue, no thread hop, the cheapest path for a small request. A request above INLINE_MAX_ROWS runs
on the graph's worker thread instead, so one big request does not stall every other call on the
event loop (ORT releases the GIL while it computes). `BatchingRunner` (batching.py) merges
concurrent requests behind the same `run` signature. Both admit rows through one `Admission`, so
`--max-queue-rows` bounds the rows waiting or computing per graph whether batching is on or off.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from vae_serve.errors import DeadlineExceeded, Overloaded
from vae_serve.server.models.graph import Graph
from vae_serve.server.settings import BatchingSettings
from vae_serve.server.telemetry import tracing
from vae_serve.server.telemetry.metrics import Metrics

__all__ = [
    "INLINE_MAX_ROWS",
    "TRIM_AFTER_BYTES",
    "Admission",
    "InlineRunner",
    "MemoryTrimmer",
    "Runner",
    "TimedGraph",
    "expired",
    "trimmer",
]

log = logging.getLogger(__name__)

INLINE_MAX_ROWS = 64  # above this a run (~1 ms on one core for the default model) leaves the loop
# A request whose input and output together reach this many bytes asks for a malloc_trim soon
# after (0: never); admitted, shed or refused alike. bench/memory.py measured what it returns.
TRIM_AFTER_BYTES = 4 << 20


class Runner(Protocol):
    async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]: ...

    def close(self) -> None: ...


def expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class Admission:
    """The bound on one graph's rows waiting or computing (`--max-queue-rows`): a request that
    would cross it is shed at once with `Overloaded`, before any work, and counted. `model`: the
    model the graph is of (its metrics' label)."""

    def __init__(self, label: str, metrics: Metrics, max_rows: int, model: str = "") -> None:
        self.label = label
        self.max_rows = max_rows
        self.rows = 0
        self._depth = metrics.queue_rows.labels(model, label)
        self._rejected = metrics.rejected.labels(model, label, "queue_full")
        self.late = metrics.rejected.labels(model, label, "deadline")

    def admit(self, rows: int, deadline: float | None) -> None:
        if expired(deadline):
            self.late.inc()
            raise DeadlineExceeded("deadline passed before the request was queued; not computed")
        if self.rows + rows > self.max_rows:
            self._rejected.inc()
            raise Overloaded(
                f"{self.label} queue full ({self.rows} rows waiting, limit {self.max_rows}); "
                f"retry with backoff"
            )
        self.rows += rows
        self._depth.set(self.rows)

    def release(self, rows: int) -> None:
        self.rows -= rows
        self._depth.set(self.rows)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class MemoryTrimmer:
    """Hands freed memory back to the OS a moment after a large request.

    glibc keeps the buffers of large messages (gRPC's, protobuf's, numpy's: about four copies of
    each request) in its heaps after they are freed, so RSS stays at the highest burst's level.
    `malloc_trim(0)` returns the free pages of every arena. It runs off the event loop `delay_s`
    after a large request asks (by then that request's messages are freed), one at a time: asks
    while one is pending are served by one more trim after it, so a steady stream of large
    requests trims at most about once per `delay_s`, and the last request of a burst is trimmed.
    """

    def __init__(self, delay_s: float = 1.0, trim: Callable[[int], int] | None = None) -> None:
        self.delay_s = delay_s
        self.trims = 0
        self._trim = trim or _malloc_trim()
        self._pending = False
        self._again = False

    def soon(self) -> None:
        """Ask for a trim; call on the event loop."""
        if self._trim is None:
            return
        if self._pending:
            self._again = True
            return
        self._pending = True
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay_s, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._again = False
        loop.run_in_executor(None, self._run).add_done_callback(self._done)

    def _run(self) -> float:
        assert self._trim is not None  # soon() starts no run without one
        began = time.perf_counter()
        self._trim(0)
        return time.perf_counter() - began

    def _done(self, future: asyncio.Future[float]) -> None:
        self._pending = False
        if not future.cancelled() and future.exception() is None:
            self.trims += 1
            log.debug("malloc_trim took %.1f ms", future.result() * 1e3)
        if self._again:
            self.soon()

    def after(self, nbytes: int) -> None:
        """A request that moved `nbytes` (in and out) is done: ask for a trim if that was large."""
        if TRIM_AFTER_BYTES and nbytes >= TRIM_AFTER_BYTES:
            self.soon()


trimmer = MemoryTrimmer()  # one per process: the heap is


class TimedGraph:
    """A graph of one model version, with its run metrics and one worker thread of its own.

    Each run is timed once; that time feeds the run histograms and, for a run that served several
    requests, Triton's per-request compute statistics (which count its time once per request).
    `label`: which graph (`encoder`, `decoder`); `model`: the model it is of."""

    def __init__(self, graph: Graph, label: str, metrics: Metrics, version: str, model: str = "") -> None:
        self.graph = graph
        self.label = label
        self.version = version
        self.model = model
        self.provider = graph.provider
        self._compute = metrics.compute_duration.labels(model, label, version)
        self._rows = metrics.batch_size.labels(model, label, version)
        self._shared = metrics.shared_compute.labels(model, label, version)
        self._last_run = metrics.last_run.labels(model, label, version)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{label}")

    def run(self, x: np.ndarray, requests: int = 1) -> list[np.ndarray]:
        began = time.perf_counter()
        outputs = self.graph.run(x)
        took = time.perf_counter() - began
        self._compute.observe(took)
        self._rows.observe(len(x))
        if requests > 1:
            self._shared.inc(took * (requests - 1))
        self._last_run.set(time.time())
        return outputs

    async def run_off_loop(
        self, x: np.ndarray, deadline: float | None = None, requests: int = 1
    ) -> list[np.ndarray]:
        """On the worker thread; a deadline that passes while waiting for the thread means no compute."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run_before, x, deadline, requests)

    def _run_before(self, x: np.ndarray, deadline: float | None, requests: int) -> list[np.ndarray]:
        if expired(deadline):
            raise DeadlineExceeded("deadline passed while waiting for the worker thread; not computed")
        return self.run(x, requests)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class InlineRunner:
    """No batching, but the same queue bound as the batcher: rows computing now or waiting for the
    worker thread count against `max_queue_rows`."""

    def __init__(self, graph: TimedGraph, metrics: Metrics, settings: BatchingSettings) -> None:
        self.graph = graph
        self.admission = Admission(graph.label, metrics, settings.max_queue_rows, graph.model)

    async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        self.admission.admit(len(x), deadline)
        try:
            with tracing.compute_span(self.graph.label, self.graph.provider, len(x), model=self.graph.model):
                if len(x) <= INLINE_MAX_ROWS:
                    return self.graph.run(x)
                return await self.graph.run_off_loop(x, deadline)
        finally:
            self.admission.release(len(x))

    def close(self) -> None:
        self.graph.close()
