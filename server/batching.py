"""Dynamic batching: concurrent requests to one graph are merged into one ONNX Runtime run.

A request joins a bounded queue (full -> `Overloaded`, at once) and awaits a future. One collector
task per graph takes what is queued, up to `max_batch_size` rows, runs it in one ORT call and hands
each caller exactly its own rows. Batches of up to INLINE_MAX_ROWS rows run on the event loop
(measured: a thread hop costs more than it frees at that size); larger ones run on the graph's
worker thread, and the loop keeps admitting requests meanwhile. Under load, requests that arrive
while a batch runs form the next one: throughput comes from merging, not from waiting.
`max_queue_delay_us` > 0 additionally holds a partial batch open that long for more rows; 0 runs
what is queued now. Requests whose deadline passed while queued are
failed with `DeadlineExceeded` and never computed. A request above `max_batch_size` rows runs
on its own.

asyncio timers round up to about a millisecond, so "now" is implemented without a timer: the
collector yields to the event loop once, letting requests that already arrived join the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vae_serve.errors import DeadlineExceeded, Overloaded

from .metrics import Metrics
from .runner import INLINE_MAX_ROWS, TimedGraph

__all__ = ["BatchingRunner"]

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future[list[np.ndarray]]
    deadline: float | None
    queued_at: float = field(default_factory=time.monotonic)


class BatchingRunner:
    def __init__(
        self,
        graph: TimedGraph,
        metrics: Metrics,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_rows: int,
    ) -> None:
        self.graph = graph
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_us / 1e6
        self.max_queue_rows = max_queue_rows
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._arrived: asyncio.Event | None = None  # made on first use, on the serving loop
        self._full: asyncio.Event | None = None
        self._expected = 1  # requests the last batch merged: as many are likely on their way again
        self._collector: asyncio.Task[None] | None = None
        self._queue_time = metrics.queue_duration.labels(graph.label)
        self._depth = metrics.queue_rows.labels(graph.label)
        self._rejected = metrics.rejected.labels(graph.label, "queue_full")
        self._expired = metrics.rejected.labels(graph.label, "deadline")

    async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        if len(x) > self.max_batch_size:
            return await self.graph.run_off_loop(x)
        if self._queued_rows + len(x) > self.max_queue_rows:
            self._rejected.inc()
            raise Overloaded(
                f"{self.graph.label} queue full ({self._queued_rows} rows waiting, "
                f"limit {self.max_queue_rows}); retry with backoff"
            )
        if self._collector is None:
            self._arrived, self._full = asyncio.Event(), asyncio.Event()
            self._collector = asyncio.create_task(self._collect_forever(), name=f"batcher-{self.graph.label}")
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(x, future, deadline))
        self._queued_rows += len(x)
        self._depth.set(self._queued_rows)
        self._arrived.set()
        if len(self._queue) >= self._expected or self._queued_rows >= self.max_batch_size:
            self._full.set()
        return await future

    def _take_batch(self) -> list[_Pending]:
        """Pop queued requests up to max_batch_size rows; fail the expired, skip the cancelled."""
        batch, rows, now = [], 0, time.monotonic()
        while self._queue and rows + len(self._queue[0].x) <= self.max_batch_size:
            item = self._queue.popleft()
            self._queued_rows -= len(item.x)
            if item.future.cancelled():
                continue
            if item.deadline is not None and now >= item.deadline:
                self._expired.inc()
                item.future.set_exception(DeadlineExceeded("deadline passed while queued; not computed"))
                continue
            self._queue_time.observe(now - item.queued_at)
            batch.append(item)
            rows += len(item.x)
        self._depth.set(self._queued_rows)
        return batch

    async def _fill(self) -> None:
        """Let requests that already arrived join. When the last batch merged several requests,
        also hold this one open, up to max_queue_delay, until as many are queued again (or a full
        batch): under steady load the batch then leaves as soon as its usual company is in, and a
        lone request never waits."""
        await asyncio.sleep(0)  # no timer: let gRPC hand over what already arrived
        if (
            self.max_queue_delay <= 0
            or len(self._queue) >= self._expected
            or self._queued_rows >= self.max_batch_size
        ):
            return
        left = self._queue[0].queued_at + self.max_queue_delay - time.monotonic()
        if left > 0:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), left)

    async def _collect_forever(self) -> None:
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._fill()
            batch = self._take_batch()
            self._expected = max(1, len(batch))
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        merged = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
        try:
            if len(merged) <= INLINE_MAX_ROWS:
                outputs = self.graph.run(merged)  # cheaper than a thread hop at this size (bench/)
            else:
                outputs = await self.graph.run_off_loop(merged)
        except Exception as exc:  # ORT failed: every caller in the batch gets the error
            log.exception("%s batch of %d rows failed", self.graph.label, len(merged))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            end = start + len(item.x)
            if not item.future.done():
                item.future.set_result([out[start:end] for out in outputs])
            start = end

    def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.cancel()
        self._queue.clear()
        self.graph.close()
