"""`--workers N`: N serving processes on one port, forked before any gRPC object exists.

The supervisor checks the port and every model once (so a mistake is one line, not N), names
the models every worker serves (so a replacement serves what its siblings do), forks the
workers, serves their merged metrics on the metrics port, forwards SIGTERM/SIGINT so each worker
drains and SIGHUP so each looks for new versions. The kernel spreads connections over the workers
(SO_REUSEPORT); each has its own batcher and ORT sessions. A worker also dies with its supervisor
(PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no orphan holding the port.
prometheus_client picks its multiprocess mode when it is first imported, so `run_workers` sets
PROMETHEUS_MULTIPROC_DIR before anything imports it: nothing at this module's top level may
import prometheus_client (or `.app`, `.metrics`), and the CLI imports this module, not the app.

Each worker reports on a pipe: one byte once it listens with its signal handlers in place (ready),
or its start-up error. The rules, by that report, never by how long a worker lived:
- a first worker that ends before it is ready is a start-up failure: the supervisor stops the
  others and exits 1 with one line (the first worker's error);
- any worker that ends after it was ready, and any replacement that ends before it is ready, is
  replaced, always: a transient cause (OOM kill, a crash) must not take down the siblings still
  serving. Replacements are rate-limited (`_backoff`) so a crash loop costs a start every few seconds.
A SIGHUP never kills a worker: it ignores SIGHUP from its fork until its handler is in place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import selectors
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ports import ready_line
from .settings import Settings
from .wakeup import SignalWakeUp

if TYPE_CHECKING:
    from .http.metrics_port import MetricsPort
    from .models.source import StorePoller

__all__ = ["StartFailure", "run_workers"]

log = logging.getLogger(__name__)

RESTART_WINDOW_S = 30.0  # restarts this recent count towards the next one's delay
RESTART_BASE_S = 0.25  # the second restart within the window waits this long, each further one twice as long
RESTART_CAP_S = 4.0
_PR_SET_PDEATHSIG = 1
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_READY = b"R"
_ERROR = b"E"
_MAX_REPORT = 4000  # under PIPE_BUF: one write, read whole


class StartFailure(Exception):
    """A first worker ended before it was ready; the message says which and why, in one line."""


def _report(fd: int, message: bytes) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone; PR_SET_PDEATHSIG ends this worker soon
        os.write(fd, message[:_MAX_REPORT])


def _worker(settings: Settings, supervisor: int, report: int, inherited: list[int]) -> None:
    """Body of a forked child: serve, then exit without running the parent's cleanup."""
    for fd in inherited:  # the supervisor's metrics socket, wake-up pair, selector, siblings' pipes
        os.close(fd)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until app.run handles it; its first scan covers these
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    code = 0
    try:
        if os.getppid() != supervisor:  # it died before prctl took effect
            raise SystemExit(1)
        from vae_serve.errors import ServingError, StartError

        from .app import run
        from .grpc import busy_poll
        from .telemetry import tracing

        try:
            tracing.configure()  # its own provider and export thread, its pid in the resource
            served = run(settings, worker=True, on_ready=lambda: _report(report, _READY))
            busy_poll.run(served, settings.network.busy_poll_us)
        except (StartError, ServingError, tracing.TracingError) as exc:
            _report(report, _ERROR + str(exc).encode(errors="replace"))  # the supervisor says it, once
            code = 1
        finally:
            tracing.shutdown()  # os._exit skips atexit: what is buffered goes out here
    except BaseException:
        log.exception("worker %d crashed", os.getpid())
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _how(exit_code: int) -> str:
    if exit_code >= 0:
        return f"exit {exit_code}"
    try:
        return f"killed by {signal.Signals(-exit_code).name}"
    except ValueError:
        return f"killed by signal {-exit_code}"


@dataclass
class _Worker:
    pid: int
    report: int  # read end of its pipe
    first: bool  # one of the workers started with the supervisor
    ready: bool = False
    error: str = ""


class _Supervisor:
    def __init__(self, settings: Settings, http: MetricsPort) -> None:
        self.settings = settings
        self.http = http
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.failure = ""  # why start-up failed, once it has
        self.code = 0
        self.all_ready = False
        self.restarts: collections.deque[float] = collections.deque()
        self.due: list[float] = []  # when each pending replacement starts
        self.selector = selectors.DefaultSelector()
        # Every signal writes a byte here, so a wait for pipes ends at once for SIGCHLD or SIGTERM.
        self.wake = SignalWakeUp()
        self.selector.register(self.wake.receive, selectors.EVENT_READ)
        self.poller: StorePoller | None = None  # the one poll of an object store, if any

    def install_signals(self) -> None:
        self.wake.install()
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to write the wake-up byte
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        signal.signal(signal.SIGHUP, self.hang_up)

    def close(self) -> None:
        self.wake.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the supervision is over; only the exit is left
        self.selector.close()

    def spawn(self, first: bool) -> None:
        receive, send = os.pipe()
        os.set_blocking(receive, False)
        inherited = [
            self.http.socket.fileno(),
            *self.wake.fds(),
            self.selector.fileno(),
            receive,
            *(w.report for w in self.workers.values()),
        ]
        # Signals wait until the child is on record and has its own dispositions, so none can miss it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            if self.stopping:
                os.close(receive)
                os.close(send)
                return
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                _worker(self.settings, parent, send, inherited)
            os.close(send)
            self.workers[pid] = _Worker(pid, receive, first)
            self.selector.register(receive, selectors.EVENT_READ, pid)
            if self.stopping:  # a stop handler ran between the check and the record
                os.kill(pid, signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    def hang_up(self, signum: int, _frame: object = None) -> None:
        """ "Look for new versions now", in every worker, and in the store first if there is one."""
        if self.poller is not None:
            self.poller.wake()  # it wakes the workers again once a new version is in the cache
        self.forward(signum)

    def forward(self, signum: int, _frame: object = None) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):  # ended; reaped on the next turn
                os.kill(pid, signum)

    def stop(self, signum: int, _frame: object = None) -> None:
        self.stopping = True
        self.due.clear()
        self.forward(signum)

    def _read(self, worker: _Worker) -> None:
        """Take in what the worker reported so far: ready, or its start-up error."""
        try:
            while data := os.read(worker.report, _MAX_REPORT + 1):
                if data.startswith(_READY):
                    data = data[1:]
                    if not worker.ready:
                        worker.ready = True
                        log.info("worker %d ready", worker.pid)
                        self._check_all_ready()
                if data.startswith(_ERROR):  # said in one line, as every start-up error is
                    worker.error = " ".join(data[1:].decode(errors="replace").split())
        except BlockingIOError:
            return
        if worker.report in self.selector.get_map():  # end of file: it is ending; reaped on SIGCHLD
            self.selector.unregister(worker.report)

    def _check_all_ready(self) -> None:
        if not self.all_ready and sum(w.ready for w in self.workers.values()) == self.settings.workers:
            self.all_ready = True
            log.info("all %d workers ready", self.settings.workers)
            s = self.settings  # with workers every port is fixed (settings.py): the ones bound
            log.info("%s", ready_line(s, s.port, s.http_port if s.http else None, self.http.port))

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:  # not ours (an orphan reparented to us, when we are PID 1)
                continue
            self._read(worker)  # what it said before it went; unregisters it at end of file
            if worker.report in self.selector.get_map():  # a descendant still holds its pipe
                self.selector.unregister(worker.report)
            os.close(worker.report)
            multiprocess.mark_process_dead(pid)
            self._judge(worker, os.waitstatus_to_exitcode(status))

    def _judge(self, worker: _Worker, exit_code: int) -> None:
        pid, how = worker.pid, _how(exit_code)
        why = f": {worker.error}" if worker.error else ""
        if self.stopping:
            stopped_early = not worker.ready and exit_code in (-signal.SIGTERM, -signal.SIGINT)
            if exit_code != 0 and not stopped_early:  # a worker that never served lost nothing
                if self.failure:  # an echo of the failure already reported
                    log.info("worker %d also ended (%s)%s", pid, how, why)
                else:
                    log.error("worker %d ended badly while stopping (%s)%s", pid, how, why)
                    self.code = 1
            return
        if worker.first and not worker.ready:
            self.failure = (
                f"worker {pid}: {worker.error}" if worker.error else f"worker {pid} {how} at start-up"
            )
            self.code = 1
            self.stop(signal.SIGTERM)
            return
        delay = self._backoff()
        state = "died" if worker.ready else "failed to start"
        log.error("worker %d %s (%s)%s; starting another in %.2f s", pid, state, how, why, delay)
        self.due.append(time.monotonic() + delay)

    def _backoff(self) -> float:
        """No wait for the first restart in a while; then 0.25 s, 0.5 s, ... up to RESTART_CAP_S."""
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        recent = len(self.restarts)
        self.restarts.append(now)
        return 0.0 if recent == 0 else min(RESTART_CAP_S, RESTART_BASE_S * 2 ** (recent - 1))

    def supervise(self) -> int:
        """Until every worker has ended after a stop; returns the exit code."""
        while self.workers or (self.due and not self.stopping):
            soonest = min(self.due, default=None)  # one step: the stop handler may clear `due` any time
            timeout = None if soonest is None else max(0.0, soonest - time.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.fileobj is self.wake.receive:
                    self.wake.discard()
                elif key.data in self.workers:
                    self._read(self.workers[key.data])
            self._reap()
            now = time.monotonic()
            for when in [t for t in self.due if t <= now]:
                with contextlib.suppress(ValueError):  # cleared by a stop: spawn() would refuse anyway
                    self.due.remove(when)
                    self.spawn(first=False)
        return self.code


def run_workers(settings: Settings) -> int:
    """Supervise `settings.workers` workers until a signal; returns the exit code.

    Raises StartFailure when a first worker ends before it is ready (the others are stopped)."""
    metrics_dir = tempfile.mkdtemp(prefix=f"vae-serve-metrics-{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from .http.metrics_port import MetricsPort
    from .models.repository import resolve
    from .models.selection import choose_models
    from .models.source import ModelSource, StorePoller
    from .ports import check_ports_free
    from .telemetry.metrics import multiprocess_registry

    try:
        check_ports_free(settings)
        source = ModelSource(settings.repository)
        chosen = choose_models(settings.repository, asyncio.run(source.prepare()))
        for model, version in chosen.items():
            resolve(source.root, model, version)  # card + sha256, no ORT
        # Every worker serves these models, a replacement started later too, whatever the
        # repository holds by then; from an object store, the workers read its cache as a local
        # repository, which the supervisor alone keeps in sync with the store.
        settings = settings.model_copy(update={"model": list(chosen), "model_repository": str(source.root)})
        http = MetricsPort(multiprocess_registry(), settings.metrics_host, settings.metrics_port)
        supervisor = _Supervisor(settings, http)
        if source.store is not None:
            supervisor.poller = StorePoller(source, list(chosen), lambda: supervisor.forward(signal.SIGHUP))
        try:
            supervisor.install_signals()
            for _ in range(settings.workers):
                supervisor.spawn(first=True)
            http.start()  # after the first forks: a child forked beside a thread may inherit its locks
            if supervisor.poller is not None:
                supervisor.poller.start()
            log.info(
                "supervising %d workers on %s:%d, merged metrics on :%d",
                settings.workers,
                settings.host,
                settings.port,
                http.port,
            )
            code = supervisor.supervise()
        finally:
            if supervisor.poller is not None:
                supervisor.poller.stop()
            supervisor.close()
            http.close()
        if supervisor.failure:
            raise StartFailure(supervisor.failure)
        return code
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
