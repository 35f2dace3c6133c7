"""How a request's rows reach ONNX Runtime. A runner is what the data plane awaits for one graph.

`InlineRunner` (batching off, `--max-batch-size 1`) calls ORT straight from the handler: no
queue, no thread hop, the cheapest path for a small request. A request above INLINE_MAX_ROWS runs
on the graph's worker thread instead, so one big request does not stall every other call on the
event loop (ORT releases the GIL while it computes). `BatchingRunner` (batching.py) merges
concurrent requests behind the same `run` signature.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from vae_serve.errors import DeadlineExceeded

from .metrics import Metrics
from .runtime import Graph

__all__ = ["INLINE_MAX_ROWS", "InlineRunner", "Runner", "TimedGraph"]

INLINE_MAX_ROWS = 64  # above this a run (~1 ms on one core for the default model) leaves the loop


class Runner(Protocol):
    async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class TimedGraph:
    """A graph with its compute-time and batch-size metrics, and one worker thread of its own."""

    def __init__(self, graph: Graph, label: str, metrics: Metrics) -> None:
        self.graph = graph
        self.label = label
        self._compute = metrics.compute_duration.labels(label)
        self._rows = metrics.batch_size.labels(label)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{label}")

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        began = time.perf_counter()
        outputs = self.graph.run(x)
        self._compute.observe(time.perf_counter() - began)
        self._rows.observe(len(x))
        return outputs

    async def run_off_loop(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        """On the worker thread; a deadline that passes while waiting for the thread means no compute."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._run_before, x, deadline)

    def _run_before(self, x: np.ndarray, deadline: float | None) -> list[np.ndarray]:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed while waiting for the worker thread; not computed")
        return self.run(x)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class InlineRunner:
    def __init__(self, graph: TimedGraph) -> None:
        self.graph = graph

    async def run(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before the request ran; not computed")
        if len(x) <= INLINE_MAX_ROWS:
            return self.graph.run(x)
        return await self.graph.run_off_loop(x, deadline)

    def close(self) -> None:
        self.graph.close()
