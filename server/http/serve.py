"""The HTTP port: uvicorn serving the ASGI app on the gRPC server's own event loop.

uvicorn with httptools: it starts on a running loop over a socket it is given, and its
HTTP/1.1 path is cheap (bench/rest.py: ~95 us of server CPU per request for the floor, about
10k requests/s on one core); Hypercorn serving the same floor managed 0.25-0.6x of its requests/s
(bench/http_stack.py). What uvicorn lacks is added here:

- a deadline for receiving a request. uvicorn's keep-alive timeout only covers the idle time
  between requests, and every byte resets it, so a client trickling its headers or body one byte
  at a time would hold a connection forever (slowloris);
- a bound on the request line and headers (httptools has none);
- a deadline on the TLS handshake (the receive timeout), which uvicorn leaves at asyncio's 60 s;
- a cap on open connections (`--http-max-connections`) that answers in JSON, where uvicorn's
  own limit answers in plain text;
- start and stop under the server's own lifecycle: no signal handlers of uvicorn's (the server
  has its own), no lifespan, no logging configuration of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vae_serve.errors import ModelLoadError
from vae_serve.server.settings import HttpSettings, NetworkSettings, TLSSettings

__all__ = ["HttpServer", "bind"]

log = logging.getLogger(__name__)


MAX_HEAD_BYTES = 64 * 1024  # a request line and headers; httptools itself sets no limit
STATUS_TEXT = {400: "Bad Request", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _refusal(status: int, message: str) -> bytes:
    """A whole JSON error response that closes the connection, written before any app runs."""
    body = orjson.dumps({"error": message})
    retry = "retry-after: 1\r\n" if status == 503 else ""
    head = (
        f"HTTP/1.1 {status} {STATUS_TEXT[status]}\r\ncontent-type: application/json\r\n{retry}"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _HeadTooLarge(Exception):
    pass


class _DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on receiving each request, a bound on its
    head, and a cap on open connections, each refusal answered in JSON as every other error is.

    The deadline runs from a connection's first byte between requests (or its opening) until
    the request's body is complete; it is not armed while a request is being answered, so a
    pipelined request waits for its predecessor without being cut off. A connection closed for
    slowness, or kept alive past its time, is aborted: a client that stops reading cannot hold
    its reply's memory and its slot by never draining the socket.
    """

    receive_timeout_s = 5.0  # set per server by `HttpServer`: --receive-timeout-s
    max_connections = 1024  # and --http-max-connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._receipt: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            limit = self.max_connections
            self._refuse(503, f"over {limit} HTTP connections open (--http-max-connections); retry")
            return
        self._arm()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:  # between requests: a new one begins
            self._arm()
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served here")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge) or self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, "not a valid HTTP/1.1 request")

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body:
            self._arm()  # a pipelined request started now, its body still on the way

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge  # httptools stops parsing and raises HttpParserCallbackError

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        self.transport.write(_refusal(status, message))
        self.transport.close()

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
            "aborting an HTTP connection whose request took over %.1f s to arrive", self.receive_timeout_s
        )
        self.transport.abort()


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
            date_header=False,  # uvicorn refreshes it only in a main loop this server does not run
            timeout_keep_alive=http.http_keep_alive_s,
            timeout_graceful_shutdown=network.drain_grace_s,
            ssl_certfile=tls.tls_cert,
            ssl_keyfile=tls.tls_key,
            ssl_ca_certs=tls.tls_client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.tls_client_ca else ssl.CERT_NONE,
        )
        config.load()
        if config.ssl is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._receive_timeout_s = network.receive_timeout_s
        self.port: int = sock.getsockname()[1]

    async def start(self) -> None:
        """What `uvicorn.Server.startup` does for a given socket, plus a TLS handshake deadline:
        uvicorn passes none, so asyncio's 60 s default would let silent connections pile up
        before the receive deadline (armed once the handshake is done) could reach them."""
        server, config = self._server, self._server.config
        server.lifespan = config.lifespan_class(config)  # "off": its shutdown does nothing

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=server.server_state, app_state=server.lifespan.state
            )

        loop = asyncio.get_running_loop()
        handshake = {"ssl_handshake_timeout": self._receive_timeout_s} if config.ssl is not None else {}
        listener = await loop.create_server(
            protocol, sock=self._sock, ssl=config.ssl, backlog=config.backlog, **handshake
        )
        server.servers = [listener]
        server.started = True

    async def stop(self, grace: float) -> None:
        """Close the port and idle connections; requests still running get `grace` seconds (what
        the drain left of --drain-grace-s)."""
        self._server.config.timeout_graceful_shutdown = max(grace, 0.0)
        if self._server.started:
            await self._server.shutdown(sockets=[self._sock])
        else:
            self._sock.close()
