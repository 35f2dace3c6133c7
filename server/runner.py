"""How a request's rows reach ONNX Runtime: here, straight from the handler.

A runner is what the data plane awaits for one graph. This one runs requests of up to
`max_batch_size` rows on the event loop, with no queue and no thread hop (the cheapest path for
small requests, measured in bench/). Larger requests run in chunks of `max_batch_size` on a
worker thread, so one big request neither hands ORT an unbounded batch nor stalls every other
call on the loop (ORT releases the GIL while it computes). A batching runner with the same `run`
signature can stand in for it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from .metrics import Metrics
from .runtime import Graph

__all__ = ["InlineRunner"]


class InlineRunner:
    def __init__(self, graph: Graph, label: str, max_batch_size: int, metrics: Metrics) -> None:
        self.graph = graph
        self.max_batch_size = max_batch_size
        self._compute = metrics.compute_duration.labels(label)
        self._rows = metrics.batch_size.labels(label)

    def _run_once(self, x: np.ndarray) -> list[np.ndarray]:
        began = time.perf_counter()
        outputs = self.graph.run(x)
        self._compute.observe(time.perf_counter() - began)
        self._rows.observe(len(x))
        return outputs

    def _run_chunked(self, x: np.ndarray) -> list[np.ndarray]:
        step = self.max_batch_size
        parts = [self._run_once(x[i : i + step]) for i in range(0, len(x), step)]
        return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]

    async def run(self, x: np.ndarray) -> list[np.ndarray]:
        if len(x) <= self.max_batch_size:
            return self._run_once(x)
        return await asyncio.to_thread(self._run_chunked, x)
