"""The HTTP port: uvicorn serving the ASGI app on the gRPC server's own event loop.

uvicorn (with httptools) was picked over hypercorn for this: it is the stack FastAPI is measured
on, and its HTTP/1.1 path costs less per request (bench/). Two things it lacks are added here:

- a deadline for receiving a request. uvicorn's keep-alive timeout only covers the idle time
  between requests, and every byte resets it, so a client trickling its headers or body one byte
  at a time would hold a connection forever (slowloris). `_DeadlineProtocol` closes a connection
  whose request (headers and body) is not in within `--receive-timeout-s` of its first byte, or of
  the connection opening;
- a cap on open connections (`--http-max-connections`) that answers the one over it with a JSON
  503 and closes it, where uvicorn's own limit answers in plain text;
- start and stop under the server's own lifecycle: no signal handlers of uvicorn's (the server
  has its own), no lifespan, no logging configuration of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vae_serve.errors import ModelLoadError
from vae_serve.server.settings import HttpSettings, NetworkSettings, TLSSettings

__all__ = ["HttpServer", "bind"]

log = logging.getLogger(__name__)


def _too_many_connections(limit: int) -> bytes:
    body = orjson.dumps({"error": f"over {limit} HTTP connections open (--http-max-connections); retry"})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on receiving each request, and a cap on open
    connections that answers in JSON, as every other error here does."""

    receive_timeout_s = 5.0  # set per server by `HttpServer`: --receive-timeout-s
    max_connections = 1024  # and --http-max-connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._receipt: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_too_many_connections(self.max_connections))
            transport.close()
            return
        self._arm()  # a connection that never sends a byte is closed too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._receipt is None:
            self._receipt = self.loop.call_later(self.receive_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._receipt is not None:
            self._receipt.cancel()
            self._receipt = None

    def _too_slow(self) -> None:
        self._receipt = None
        log.info(
            "closing an HTTP connection whose request took over %.1f s to arrive", self.receive_timeout_s
        )
        self.transport.close()


def bind(settings: HttpSettings, shared: bool) -> socket.socket:
    """The listening socket, bound now so that a port in use fails start-up before anything serves.
    `shared`: a worker's, SO_REUSEPORT like its gRPC port (the supervisor checked it was free)."""
    host, port = settings.http_host, settings.http_port
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ModelLoadError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ModelLoadError(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror}; is the port in use?"
        ) from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """uvicorn on the running loop, over a socket from `bind`."""

    def __init__(
        self, app: Any, sock: socket.socket, http: HttpSettings, network: NetworkSettings, tls: TLSSettings
    ) -> None:
        protocol = type(
            "DeadlineProtocol",
            (_DeadlineProtocol,),
            {"receive_timeout_s": network.receive_timeout_s, "max_connections": http.http_max_connections},
        )
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=True,
            timeout_keep_alive=http.http_keep_alive_s,
            timeout_graceful_shutdown=network.drain_grace_s,
            ssl_certfile=tls.tls_cert,
            ssl_keyfile=tls.tls_key,
            ssl_ca_certs=tls.tls_client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.tls_client_ca else ssl.CERT_NONE,
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._sock = sock
        self.port: int = sock.getsockname()[1]

    async def start(self) -> None:
        self._server.lifespan = self._server.config.lifespan_class(self._server.config)
        await self._server.startup(sockets=[self._sock])

    async def stop(self) -> None:
        """Close the port and idle connections; requests still running get the drain's grace."""
        if self._server.started:
            await self._server.shutdown(sockets=[self._sock])
        else:
            self._sock.close()
