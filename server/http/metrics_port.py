"""The metrics port: `/metrics` from uvicorn on an event loop of its own, in a daemon thread.

Its own loop, so that a scrape (which, with workers, reads every worker's files) never runs on the
serving loop; uvicorn with the HTTP port's bounds (serve.py), so that idle or slow connections,
however many, give way to a scrape instead of queueing it: a receive deadline, writes that must
progress, and a connection cap at which the oldest connection owing no answer is closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, make_asgi_app

from .serve import HttpServer, bind

__all__ = ["METRICS_MAX_CONNECTIONS", "MetricsPort"]

METRICS_MAX_CONNECTIONS = 64
METRICS_RECEIVE_TIMEOUT_S = 3.0  # a scrape's request is one small GET
METRICS_KEEP_ALIVE_S = 30.0  # Prometheus keeps its connection between scrapes (15 s by default)
NOT_FOUND = orjson.dumps({"error": "not found: this port serves /metrics only"})


def metrics_app(registry: CollectorRegistry) -> Any:
    """`/metrics` (text or OpenMetrics, gzip when asked, as prometheus-client negotiates), 404
    elsewhere."""
    exposition = make_asgi_app(registry)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/metrics":
            await exposition(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(NOT_FOUND)).encode())]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": NOT_FOUND})

    return app


class MetricsPort:
    """Serves `registry` on host:port from a thread, from `start()` until `close()`. The port is
    bound at once, so that a busy one fails before anything else starts."""

    def __init__(self, registry: CollectorRegistry, host: str | None, port: int) -> None:
        self.socket = bind(host, port, what="serve metrics")
        self.port: int = self.socket.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._server = HttpServer(
            metrics_app(registry),
            self.socket,
            receive_timeout_s=METRICS_RECEIVE_TIMEOUT_S,
            max_connections=METRICS_MAX_CONNECTIONS,
            keep_alive_s=METRICS_KEEP_ALIVE_S,
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="metrics", daemon=True)
        self._thread.start()
        started.result(timeout=30)

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._server.start())
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        self._loop.run_forever()

    def close(self) -> None:
        if self._thread is None or not self._loop.is_running():
            self.socket.close()
            self._loop.close()
            return
        stopping = asyncio.run_coroutine_threadsafe(self._server.stop(0.0), self._loop)
        try:
            stopping.result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()
