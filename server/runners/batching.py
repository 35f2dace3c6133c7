"""Dynamic batching: concurrent requests to one graph are merged into one ONNX Runtime run.

A request joins a bounded queue (full -> `Overloaded`, at once: runner.Admission, shared with
the unbatched runner) and awaits a future. One collector
task per graph takes what is queued, up to `max_batch_size` rows, runs it in one ORT call and hands
each caller exactly its own rows. Batches of up to INLINE_MAX_ROWS rows run on the event loop
(a thread hop costs more than it frees at that size); larger ones run on the graph's
worker thread while the loop keeps admitting requests. Requests whose deadline passed before
their turn fail with `DeadlineExceeded` and are never computed. A request above
`max_batch_size` rows runs on its own, under the same queue bound and deadline.

How long a partial batch waits for company (at most `max_queue_delay_us`):
- "fixed": always, until the batch is full or the delay is over (0: run what is queued now);
- "adaptive" (default): only for as many requests as the largest batch of the last MEMORY_DELAYS
  delays merged, so a lone request never waits, and a steady load leaves as soon as its usual
  company is in. The largest of several, not the last alone, so that a small batch does not set
  a small target for the next (docs/design-notes.md).
The wait is what makes batching pay on this stack: gRPC hands a busy event loop one call per
turn, and only a loop that waits takes them in bulk. asyncio timers round up to about a
millisecond, so "now" uses no timer: the collector yields to the loop once, letting calls that
already arrived join. A request that finds the collector idle and would not wait yields that
turn itself and, still alone, runs as its own batch without waking the collector (`_alone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import SpanContext

from vae_serve.errors import DeadlineExceeded, Draining
from vae_serve.server.protocol.calls import request_id
from vae_serve.server.settings import BatchingSettings
from vae_serve.server.telemetry import tracing
from vae_serve.server.telemetry.metrics import Metrics

from .runner import INLINE_MAX_ROWS, Admission, TimedGraph, expired

__all__ = ["MEMORY_DELAYS", "BatchingRunner", "RecentMax"]

log = logging.getLogger(__name__)

MEMORY_DELAYS = 10  # the adaptive wait remembers batches this many queue delays back


class RecentMax:
    """The largest value noted in the last `span` seconds, 1 when none: a sliding-window maximum
    (a deque of decreasing values, O(1) amortized per note)."""

    def __init__(self, span: float) -> None:
        self.span = span
        self._window: deque[tuple[float, int]] = deque()

    def note(self, value: int, now: float) -> None:
        while self._window and self._window[-1][1] <= value:
            self._window.pop()  # never the maximum again: `value` is newer and as large
        self._window.append((now, value))

    def get(self, now: float) -> int:
        while self._window and self._window[0][0] < now - self.span:
            self._window.popleft()
        return self._window[0][1] if self._window else 1


@dataclass(eq=False)  # compared by identity: `in` and `remove` on the queue never compare arrays
class _Pending:
    x: np.ndarray
    future: asyncio.Future[list[np.ndarray]]
    deadline: float | None
    queued_at: float = field(default_factory=time.monotonic)
    request_id: str = field(default_factory=request_id.get)  # for the batch's error line
    traced: tuple[SpanContext, int] | None = None  # its call's span and when it joined (tracing on)


class BatchingRunner:
    def __init__(
        self,
        graph: TimedGraph,
        metrics: Metrics,
        settings: BatchingSettings,
    ) -> None:
        self.graph = graph
        self.max_batch_size = settings.max_batch_size
        self.max_queue_delay = settings.max_queue_delay_us / 1e6
        self.delay_policy = settings.queue_delay_policy
        self._queue: deque[_Pending] = deque()
        # Rows waiting, or computing alone.
        self.admission = Admission(graph.label, metrics, settings.max_queue_rows, graph.model)
        self._running: list[_Pending] = []  # the batch in ORT now
        self._arrived: asyncio.Event | None = None  # made on first use, on the serving loop
        self._full: asyncio.Event | None = None
        # Requests the recent batches merged, at most: as many are likely on their way again.
        self._company = RecentMax(MEMORY_DELAYS * self.max_queue_delay)
        self._collector: asyncio.Task[None] | None = None
        self._idle = False  # the collector waits for a request: a lone one may run itself (_alone)
        self._closed = False
        self._queue_time = metrics.queue_duration.labels(graph.model, graph.label, graph.version)
        self._late = self.admission.late

    @property
    def _queued_rows(self) -> int:
        return self.admission.rows

    def _admit(self, rows: int, deadline: float | None) -> None:
        if self._closed:
            raise Draining(f"{self.graph.label} runner closed; retry")
        self.admission.admit(rows, deadline)

    def _release(self, rows: int) -> None:
        self.admission.release(rows)

    async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        self._admit(len(x), deadline)
        if len(x) > self.max_batch_size:
            try:
                graph = self.graph
                with tracing.compute_span(graph.label, graph.provider, len(x), model=graph.model):
                    return await self.graph.run_off_loop(x, deadline)
            finally:
                self._release(len(x))
        if self._collector is None:
            self._arrived, self._full = asyncio.Event(), asyncio.Event()
            # In a context of its own: not the first caller's (its request id, its span).
            self._collector = asyncio.create_task(
                self._collect_forever(), name=f"batcher-{self.graph.label}", context=contextvars.Context()
            )
            self._collector.add_done_callback(self._collector_ended)
        item = _Pending(x, asyncio.get_running_loop().create_future(), deadline, traced=tracing.queued())
        self._queue.append(item)
        if self._only(item) and not self._waits_for_company():
            return await self._alone(item)
        self._signal()
        return await item.future

    def _signal(self) -> None:
        """Wake the collector, and end its wait for company when the batch is as full as expected."""
        assert self._arrived is not None and self._full is not None  # made before anything is queued
        self._arrived.set()
        if self._queued_rows >= self.max_batch_size or (
            self.delay_policy == "adaptive" and len(self._queue) >= self._company.get(time.monotonic())
        ):
            self._full.set()

    def _only(self, item: _Pending) -> bool:
        """`item` is all that is queued, the collector is idle, and it is small enough for the loop."""
        alone = self._idle and not self._closed and len(self._queue) == 1 and self._queue[0] is item
        return alone and len(item.x) <= INLINE_MAX_ROWS

    async def _alone(self, item: _Pending) -> list[np.ndarray]:
        """A request that finds the collector idle and would not wait for company gathers it as the
        collector would (one turn of the loop) and, when none came, runs as its batch itself: a lone
        request spares the collector's wake-up and its own, two loop turns. When company came, the
        collector takes them all, as without this path."""
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            if item in self._queue:
                self._queue.remove(item)
                self._release(len(item.x))
            raise
        if not self._only(item):
            self._signal()
            return await item.future
        batch = self._take_batch()  # [item], or none when its deadline passed (its future says so)
        if batch:
            self._company.note(1, time.monotonic())
            await self._run_batch(batch)  # inline: a batch this small never leaves the loop
        return item.future.result()

    def _take_batch(self) -> list[_Pending]:
        """Pop queued requests up to max_batch_size rows; fail the expired, skip the cancelled."""
        batch, rows, now = [], 0, time.monotonic()
        while self._queue and rows + len(self._queue[0].x) <= self.max_batch_size:
            item = self._queue.popleft()
            self._release(len(item.x))
            if item.future.cancelled():
                continue
            if expired(item.deadline):
                self._late.inc()
                late = DeadlineExceeded("deadline passed while queued; not computed")
                if item.traced is not None:
                    tracing.waited(item.traced, self.graph.label, len(item.x), late, model=self.graph.model)
                item.future.set_exception(late)
                continue
            self._queue_time.observe(now - item.queued_at)
            if item.traced is not None:
                tracing.waited(item.traced, self.graph.label, len(item.x), model=self.graph.model)
            batch.append(item)
            rows += len(item.x)
        return batch

    def _waits_for_company(self) -> bool:
        if self.max_queue_delay <= 0 or self._queued_rows >= self.max_batch_size:
            return False
        return self.delay_policy == "fixed" or len(self._queue) < self._company.get(time.monotonic())

    async def _fill(self) -> None:
        """Let calls that already arrived join, then wait for company as the policy says."""
        await asyncio.sleep(0)
        if not self._queue or not self._waits_for_company():
            return
        left = self._queue[0].queued_at + self.max_queue_delay - time.monotonic()
        if left > 0:
            assert self._full is not None  # made with the collector, which alone runs this
            self._full.clear()
            with contextlib.suppress(TimeoutError):  # not wait_for: in 3.11 it can drop a cancel
                async with asyncio.timeout(left):
                    await self._full.wait()

    async def _collect_forever(self) -> None:
        assert self._arrived is not None  # made with this task, before it starts
        while True:
            if not self._queue:
                self._arrived.clear()
                self._idle = True
                try:
                    await self._arrived.wait()
                finally:
                    self._idle = False
            await self._fill()
            batch = self._take_batch()
            if batch:
                self._company.note(len(batch), time.monotonic())
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        merged = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
        self._running = batch
        requests = [item.traced[0] for item in batch if item.traced is not None]
        try:
            with tracing.compute_span(
                self.graph.label, self.graph.provider, len(merged), requests, model=self.graph.model
            ):
                if len(merged) <= INLINE_MAX_ROWS:
                    outputs = self.graph.run(merged, len(batch))  # cheaper than a thread hop here
                else:
                    outputs = await self.graph.run_off_loop(merged, requests=len(batch))
        except Exception as exc:  # ORT failed: every caller in the batch gets the error
            ids = " ".join(item.request_id for item in batch)
            log.exception("%s batch of %d rows failed (requests %s)", self.graph.label, len(merged), ids)
            self._fail(batch, exc)
            return
        finally:
            self._running = []
        start = 0
        for item in batch:
            end = start + len(item.x)
            if not item.future.done():
                item.future.set_result([out[start:end] for out in outputs])
            start = end

    @staticmethod
    def _fail(items: list[_Pending], exc: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)

    def _collector_ended(self, task: asyncio.Task[None]) -> None:
        """Whatever stopped the collector, nobody may wait for it any more."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s batcher stopped", self.graph.label, exc_info=task.exception())
        self._closed = True
        self._fail([*self._running, *self._queue], Draining(f"{self.graph.label} batcher stopped; retry"))
        for item in self._queue:  # the running batch's rows were released when it was taken
            self._release(len(item.x))
        self._queue.clear()

    def close(self) -> None:
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()  # its done-callback fails what is queued or running
        self.graph.close()
