"""`--workers N`: N serving processes on one port, forked before any gRPC object exists.

The supervisor checks the port and the model once (so a mistake is one line, not N), forks the
workers, serves their merged metrics on the metrics port, forwards SIGTERM/SIGINT so each worker
drains, and restarts a worker that dies while serving. The kernel spreads connections over the
workers (SO_REUSEPORT); each has its own batcher and ORT sessions. This module must be imported
before prometheus_client, which picks its multiprocess mode at import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from .settings import Settings

__all__ = ["run_workers"]

log = logging.getLogger(__name__)

EARLY_DEATH_S = 5.0  # a worker dying this soon after its start is a start-up failure: give up


def _worker(settings: Settings) -> None:
    """Body of a forked child: serve, then exit without running the parent's cleanup."""
    from vae_serve.errors import ModelLoadError, ServingError

    from .app import run

    code = 0
    try:
        asyncio.run(run(settings, worker=True))
    except (ModelLoadError, ServingError) as exc:
        print(f"vae-serve: worker {os.getpid()}: error: {exc}", file=sys.stderr)
        code = 1
    except BaseException:
        log.exception("worker %d crashed", os.getpid())
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _spawn(settings: Settings) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _worker(settings)
    return pid


def run_workers(settings: Settings) -> int:
    """Supervise `settings.workers` workers until a signal; returns the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="vae-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import multiprocess

    from .app import check_port_free
    from .metrics import multiprocess_registry, serve_metrics
    from .repository import resolve

    try:
        check_port_free(settings.host, settings.port)
        resolve(settings.model_repository, settings.model, settings.model_version)  # card + sha256, no ORT
        http = serve_metrics(multiprocess_registry(), settings.metrics_host, settings.metrics_port)
        stopping = False

        def forward(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            for pid in started:
                os.kill(pid, signum)

        started: dict[int, float] = {}
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for _ in range(settings.workers):
            started[_spawn(settings)] = time.monotonic()
        log.info("supervising %d workers on %s:%d, merged metrics on :%d",
                 settings.workers, settings.host, settings.port, http.server_address[1])  # fmt: skip
        code = 0
        while started:
            pid, status = os.wait()
            born = started.pop(pid)
            multiprocess.mark_process_dead(pid)
            failed = os.waitstatus_to_exitcode(status) != 0
            if stopping:
                code = code or int(failed)
            elif time.monotonic() - born < EARLY_DEATH_S:
                log.error("worker %d failed at start-up; stopping the others", pid)
                code = 1
                forward(signal.SIGTERM, None)
            else:
                log.error("worker %d died (status %d); starting another", pid, status)
                started[_spawn(settings)] = time.monotonic()
        http.shutdown()
        return code
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
