"""The server's lifecycle: load the models, open the port, serve, drain on a signal, stop.

Everything the process needs is built here from one `Settings`, in this order: every port checked
free (a busy one fails start-up before the models load), the models (one that cannot be served
fails start-up before any port opens), then metrics, then the gRPC server with health and
reflection; if the gRPC port cannot be had, metrics close again.
Stopping reverses it: health NOT_SERVING, no new work, in-flight RPCs get `drain_grace_s`, then
the sockets close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from starlette.types import ASGIApp

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip_pb2
from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.errors import PortError

from .drain import drain
from .grpc.health import HealthServicer
from .grpc.oip import OIP_SERVICE, OipServicer
from .grpc.registration import ReceiveTimeout, add_service, register
from .grpc.servicer import VAEServicer
from .http.app import build_app
from .http.endpoint import Front
from .http.metrics_port import MetricsPort
from .http.serve import CLOSE_S, HttpServer, bind
from .http.stats import Stats
from .lifecycle import Lifecycle, ServerState
from .models.model import load_model
from .models.reload import RepositoryWatcher
from .models.repository import resolve
from .models.selection import choose_models
from .ports import check_port_free, check_ports_free, ready_line
from .protocol.admin import ControlGate
from .protocol.dataplane import DataPlane
from .protocol.model_control import ModelControl
from .protocol.oip_extensions import TritonExtensions
from .settings import Settings
from .telemetry.metrics import Metrics, multiprocess_registry
from .wakeup import SignalWakeUp

__all__ = ["VaeServer", "check_port_free", "run"]

log = logging.getLogger(__name__)

VAE_SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VAEService"].full_name
_NEVER_MS = 2**31 - 1  # gRPC's "no limit" for its millisecond options
_UNLIMITED = 2**31 - 1  # the largest count a gRPC option takes


class VaeServer:
    """One serving process. As a worker (`worker=True`) it shares its port with its siblings
    (SO_REUSEPORT) and leaves /metrics to the supervisor, which merges every worker's metrics."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, worker: bool = False) -> None:
        self.settings = settings
        self.network, self.tls, self.repository = settings.network, settings.tls, settings.repository
        self.worker = worker
        self.metrics = metrics or Metrics()
        self.health = HealthServicer()
        self.state = ServerState(self.health, ("", VAE_SERVICE, OIP_SERVICE))
        self.dataplane = DataPlane(
            settings.batching, settings.limits, self.repository, self.metrics, self.state
        )
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._receive: ReceiveTimeout | None = None
        self._metrics_http: MetricsPort | None = None
        self.http_port: int | None = None
        self._http: HttpServer | None = None
        self.watcher = RepositoryWatcher(self.repository, self.dataplane, self.metrics)
        # What statistics are read from: with workers, every worker's metrics files, merged.
        self.merged_registry = multiprocess_registry() if worker else self.metrics.registry
        self.control = None
        if self.repository.model_control_mode == "explicit":
            gate = ControlGate.from_settings(settings)  # the token file read: a bad one fails start-up
            self.control = ModelControl(self.dataplane, self.watcher, self.network.drain_grace_s, gate)
        self.oip = TritonExtensions(self.dataplane, self.network.workers, self.merged_registry, self.control)
        self._watching: asyncio.Task[None] | None = None

    def load(self, listed: list[str] | None = None) -> None:
        """Every model chosen (models/selection.py; `listed`: the models an object store lists),
        each at its pinned or highest version, each watched for new versions from before it loads."""
        s = self.repository
        if s.model_control_mode == "explicit" and not s.model:
            return  # explicit model control with no --model: models come through the API alone
        for name, version in choose_models(s, listed).items():
            self.watcher.watch(name)
            files = resolve(self.watcher.root, name, version)
            model = load_model(files, s.device, s.intra_op_threads)
            self.dataplane.serve(model)
            log.info(
                "loaded %s version %s from %s on %s",
                model.name,
                files.version,
                files.path,
                model.execution_provider,
            )

    def http_app(self) -> ASGIApp:
        """The HTTP front end over this server's data plane, as one ASGI app (what the HTTP port
        serves; the tests also call it in process)."""
        front = Front(
            self.dataplane, self.metrics, self.dataplane.activity, Stats(self.merged_registry), self.oip
        )
        return build_app(front, self.settings.http_server)

    def _credentials(self) -> grpc.ServerCredentials | None:
        s = self.tls
        if s.tls_cert is None or s.tls_key is None:
            return None
        return grpc.ssl_server_credentials(
            [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
            root_certificates=s.tls_client_ca.read_bytes() if s.tls_client_ca else None,
            require_client_auth=s.tls_client_ca is not None,
        )

    def _build_server(self) -> grpc.aio.Server:
        """A gRPC server with every service registered, not yet listening."""
        s, message_bytes = self.network, self.dataplane.limits.max_message_bytes
        ms = 1000
        server = grpc.aio.server(
            # No `maximum_concurrent_rpcs`: gRPC would count every call, health checks and calls
            # still waiting for their message included; Activity admits data-plane work instead.
            options=[
                ("grpc.max_concurrent_streams", s.max_concurrent_streams),
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.max_send_message_length", message_bytes),
                # What one client can hold: connections are pinged, closed when idle or dead, and
                # asked to reconnect when old, so no stream or slot is held forever.
                ("grpc.keepalive_time_ms", int(s.keepalive_time_s * ms)),
                ("grpc.keepalive_timeout_ms", 20 * ms),
                ("grpc.max_connection_idle_ms", int(s.max_connection_idle_s * ms) or _NEVER_MS),
                ("grpc.max_connection_age_ms", int(s.max_connection_age_s * ms) or _NEVER_MS),
                ("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_s * ms)),
                # A connection's TLS and HTTP/2 handshake gets the receive deadline too (gRPC's
                # default is 120 s), so silent connections do not pile up.
                ("grpc.server_handshake_timeout_ms", int(s.receive_timeout_s * ms)),
                # gRPC shares ports by default: a second server would silently split the traffic.
                # Workers share it on purpose; their supervisor checked it was free.
                ("grpc.so_reuseport", 1 if self.worker else 0),
                # Calls the transport has received but no handler has taken yet wait in gRPC's
                # queue; past 1000 of them (a burst over several connections) gRPC cancels new ones
                # at random, and every one past 3000, as CANCELLED, which clients do not retry.
                # Every received call reaches a handler instead, to be answered or refused
                # (RESOURCE_EXHAUSTED over --max-concurrent-rpcs, UNAVAILABLE while draining); a
                # connection still carries at most max_concurrent_streams of them.
                ("grpc.server.max_pending_requests", _UNLIMITED),
                ("grpc.server.max_pending_requests_hard_limit", _UNLIMITED),
            ],
        )
        timeout = self._receive = ReceiveTimeout(s.receive_timeout_s)
        add_service(
            server, VAEServicer(self.dataplane), vae_pb2.DESCRIPTOR.services_by_name["VAEService"], timeout
        )
        add_service(
            server,
            OipServicer(self.dataplane, service=self.oip),
            oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
            timeout,
        )
        register(server, health_pb2_grpc.add_HealthServicer_to_server, self.health, timeout)
        if s.reflection:
            health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
            services = (VAE_SERVICE, OIP_SERVICE, health_service, reflection.SERVICE_NAME)
            servicer = reflection.aio.ReflectionServicer(services)
            register(server, reflection_pb2_grpc.add_ServerReflectionServicer_to_server, servicer, timeout)
        return server

    def _listen(self, server: grpc.aio.Server) -> int:
        address = f"{self.network.host}:{self.network.port}"
        if not self.worker:
            check_port_free(self.network.host, self.network.port, "listen", "--port")
        credentials = self._credentials()
        try:
            if credentials is None:
                return server.add_insecure_port(address)
            return server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise PortError(f"cannot listen on {address} ({exc}); is the port in use?") from None

    async def start(self) -> None:
        """Load the models (unless already loaded), then listen; raises StartError on a bad model or port.

        Metrics are served before the gRPC port is bound (grpc cannot release the port of a server
        it never started), and any failure after closes them again: a server that did not start
        holds no port and leaves no thread behind."""
        # What the imports made leaves the collector's scans, which would otherwise stall whichever
        # call runs at a full collection. Collected first, so no garbage is kept; frozen before the
        # model loads, so a version retired later is still freed whole.
        gc.collect()
        gc.freeze()
        if not self.worker:  # a worker's supervisor checked them, and its siblings share them
            check_ports_free(self.settings)
        if not self.dataplane.models.names:  # unless a caller loaded them already
            # An object store's versions into the cache first (bounded by its timeouts), then
            # everything loads from the cache as from a local repository.
            self.load(await self.watcher.source.prepare())
        s = self.network
        if not self.worker:
            self._metrics_http = MetricsPort(self.metrics.registry, s.metrics_host, s.metrics_port)
            self._metrics_http.start()
            self.metrics_port = self._metrics_http.port
        http_socket = None
        try:
            if self.settings.http:
                if not self.worker:
                    check_port_free(
                        self.settings.http_host or "",
                        self.settings.http_port,
                        "listen for HTTP",
                        "--http-port",
                    )
                http_socket = bind(self.settings.http_host, self.settings.http_port, shared=self.worker)
            server = self._build_server()
            self.port = self._listen(server)
            await server.start()
        except BaseException:
            if http_socket is not None:
                http_socket.close()
            self._close_metrics()
            self.port = self.metrics_port = None
            raise
        self._server = server
        if http_socket is not None:
            try:
                self._http = HttpServer(
                    self.http_app(),
                    http_socket,
                    receive_timeout_s=s.receive_timeout_s,
                    max_connections=self.settings.http_server.http_max_connections,
                    keep_alive_s=self.settings.http_server.http_keep_alive_s,
                    tls=self.tls,
                )
                await self._http.start()
            except BaseException:  # nothing of a server that did not start stays up
                http_socket.close()
                await server.stop(0)
                self._server = self._http = None
                self._close_metrics()
                self.port = self.metrics_port = None
                raise
            self.http_port = self._http.port
        if self.repository.model_control_mode == "poll":  # none and explicit: the set stays as loaded
            self._watching = asyncio.create_task(self.watcher.run_forever(), name="repository-watcher")
        await self.state.serve()
        metrics_port = self.metrics_port or s.metrics_port  # a worker's supervisor serves them
        security = "TLS" if self.tls.tls_cert else "plaintext"
        http = f"HTTP on {self.settings.http_host}:{self.http_port}" if self._http else "no HTTP"
        log.info(
            "serving on %s:%d (%s), %s, metrics on http://%s:%s/metrics",
            s.host,
            self.port,
            security,
            http,
            s.metrics_host,
            metrics_port,
        )
        if not self.worker:  # with workers, their supervisor says it once all are ready
            log.info("%s", ready_line(self.settings, self.port, self.http_port, metrics_port))

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING at once, finish what was received, then stop within the grace."""
        if self.state.phase is Lifecycle.STOPPED:
            return  # stopped already
        grace = self.network.drain_grace_s if grace is None else grace
        began = time.monotonic()
        # Kept from the grace for HTTP's connections to close: callers that never stop sending
        # would otherwise take all of it, and their last requests would be reset, not refused.
        closing = min(CLOSE_S, grace / 2) if self._http is not None else 0.0
        if self.state.phase is Lifecycle.SERVING:
            await self.state.drain()  # readiness and health NOT_SERVING at once
        if self._server is not None and self._receive is not None:
            log.info("draining: NOT_SERVING; up to %.1f s for received RPCs", grace)
            await drain(self._server, self.dataplane.activity, self._receive, grace - closing)
        elif self.state.phase is Lifecycle.LOADING:
            await self.state.stop()  # never started: nothing to drain
        if self._http is not None:  # HTTP calls were counted in the drain
            await self._http.stop(max(grace - (time.monotonic() - began), closing))
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching  # a scan in flight ends here, not after the model is closed
        if self._receive is not None:
            self._receive.close()
        self.dataplane.close()
        self._close_metrics()
        log.info("stopped")

    def _close_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None


@contextlib.contextmanager
def _signals_run(loop: asyncio.AbstractEventLoop, actions: dict[int, Callable[[], None]]) -> Iterator[None]:
    """Run `actions[signum]` on the loop for each of these signals until the block ends; then ignore them.

    Not `loop.add_signal_handler`: closing the loop would restore the default actions, and a signal
    between the drain and the exit would kill a process that has lost nothing (exit 129 or 143).
    The wake-up fd rouses the loop whichever thread the kernel gives the signal to.
    """

    def handler(signum: int, _frame: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is left to do
            loop.call_soon_threadsafe(actions[signum])

    wake = SignalWakeUp()
    loop.add_reader(wake.receive.fileno(), wake.discard)
    wake.install()
    try:
        for sig in actions:
            signal.signal(sig, handler)  # replaces SIG_IGN or SIG_DFL in one step: no gap
            signal.siginterrupt(sig, False)
        yield
    finally:
        for sig in actions:
            signal.signal(sig, signal.SIG_IGN)
        loop.remove_reader(wake.receive.fileno())
        wake.close()


async def run(settings: Settings, worker: bool = False, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain; SIGHUP means "look for new versions now".

    The caller ignores SIGHUP until the handler is in place (cli, workers); one scan right after
    stands in for any it missed. `on_ready` runs once the port listens and the signals are handled:
    a worker tells its supervisor so. Must run on the main thread (signal handlers).
    """
    server = VaeServer(settings, worker=worker)
    await server.start()
    stopping = asyncio.Event()
    actions: dict[int, Callable[[], None]] = {
        signal.SIGTERM: stopping.set,
        signal.SIGINT: stopping.set,
        signal.SIGHUP: server.watcher.wake.set,
    }
    with _signals_run(asyncio.get_running_loop(), actions):
        server.watcher.wake.set()
        if on_ready is not None:
            on_ready()
        await stopping.wait()
        await server.stop()
