"""`--workers N`: N serving processes on one port, forked before any gRPC object exists.

The supervisor checks the port and the model once (so a mistake is one line, not N), forks the
workers, serves their merged metrics on the metrics port, forwards SIGTERM/SIGINT so each worker
drains, and restarts a worker that dies while serving. The kernel spreads connections over the
workers (SO_REUSEPORT); each has its own batcher and ORT sessions. A worker also dies with its
supervisor (PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no orphan holding the port. This
module must be imported before prometheus_client, which picks its multiprocess mode at import.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from wsgiref.simple_server import WSGIServer

from .settings import Settings

__all__ = ["run_workers"]

log = logging.getLogger(__name__)

EARLY_DEATH_S = 5.0  # a worker dying this soon after its start is a start-up failure: give up
_PR_SET_PDEATHSIG = 1
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _worker(settings: Settings, inherited: WSGIServer) -> None:
    """Body of a forked child: serve, then exit without running the parent's cleanup."""
    inherited.socket.close()  # the supervisor's metrics socket is not ours to hold
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    code = 0
    try:
        if os.getppid() == 1:  # the supervisor died before prctl took effect
            raise SystemExit(1)
        from vae_serve.errors import ModelLoadError, ServingError

        from .app import run

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


class _Supervisor:
    def __init__(self, settings: Settings, http: WSGIServer) -> None:
        self.settings = settings
        self.http = http
        self.started: dict[int, float] = {}
        self.stopping = False

    def spawn(self) -> None:
        # Signals wait until the child is on record, so none can miss it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _worker(self.settings, self.http)
            self.started[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def forward(self, signum: int, _frame: object = None) -> None:
        for pid in self.started:
            os.kill(pid, signum)

    def stop(self, signum: int, _frame: object = None) -> None:
        self.stopping = True
        self.forward(signum)

    def supervise(self) -> int:
        from prometheus_client import multiprocess

        code = 0
        while self.started:
            pid, status = os.wait()
            born = self.started.pop(pid)
            multiprocess.mark_process_dead(pid)
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                code = code or int(exit_code != 0)
            elif time.monotonic() - born < EARLY_DEATH_S:
                log.error("worker %d failed at start-up (exit %d); stopping the others", pid, exit_code)
                code = 1
                self.stop(signal.SIGTERM)
            else:
                log.error("worker %d died (exit %d); starting another", pid, exit_code)
                self.spawn()
        return code


def run_workers(settings: Settings) -> int:
    """Supervise `settings.workers` workers until a signal; returns the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix=f"vae-serve-metrics-{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from .app import check_port_free
    from .metrics import multiprocess_registry, serve_metrics
    from .repository import resolve

    try:
        check_port_free(settings.host, settings.port)
        resolve(settings.model_repository, settings.model, settings.model_version)  # card + sha256, no ORT
        http = serve_metrics(multiprocess_registry(), settings.metrics_host, settings.metrics_port)
        supervisor = _Supervisor(settings, http)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, supervisor.stop)
        signal.signal(signal.SIGHUP, supervisor.forward)  # "look for new versions now", in every worker
        for _ in range(settings.workers):
            if not supervisor.stopping:
                supervisor.spawn()
        log.info("supervising %d workers on %s:%d, merged metrics on :%d",
                 settings.workers, settings.host, settings.port, http.server_address[1])  # fmt: skip
        code = supervisor.supervise()
        http.shutdown()
        return code
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
