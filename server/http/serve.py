"""The HTTP port: uvicorn serving the ASGI app on the gRPC server's own event loop.

uvicorn with httptools: it starts on a running loop over a socket it is given, and its
HTTP/1.1 path is the cheapest of the ASGI servers measured (docs/benchmarks.md). What uvicorn
lacks is added here, through uvicorn_internals.py (what of uvicorn's insides this relies on):

- a deadline for receiving a request. uvicorn's keep-alive timeout only covers the idle time
  between requests, and every byte resets it, so a client trickling its headers or body one byte
  at a time would hold a connection forever (slowloris);
- a bound on the request line and headers (httptools has none);
- a deadline on the TLS handshake (the receive timeout), which uvicorn leaves at asyncio's 60 s;
- bounds on what one client can hold: requests parsed ahead of their answers, replies it does
  not read, and a connection cap at which idle connections give way (`_BoundedProtocol`);
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

from vae_serve.errors import ModelLoadError
from vae_serve.server.settings import TLSSettings

from . import uvicorn_internals as internals
from .limits import is_count

__all__ = ["HttpServer", "bind"]

log = logging.getLogger(__name__)


MAX_HEAD_BYTES = 64 * 1024  # a request line and headers; httptools itself sets no limit
MAX_PIPELINE = 8  # requests received ahead of their answers; the rest of the bytes wait unparsed
FEED_SLICE = 4096  # bytes parsed past a known body at once: bounds the requests one feed can queue
MAX_HELD_BYTES = 1 << 20  # bytes a pipelining client may have sent past MAX_PIPELINE requests
PRESSURE_FIRST_BYTE_S = 1.0  # the first-byte deadline once over half the connection cap is open
DRAIN_LINGER_S = 1.0  # an idle connection stays this long in a drain, to answer a request with 503
CLOSE_S = DRAIN_LINGER_S + 0.25  # what closing every connection takes at the end of a drain, at most
STATUS_TEXT = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


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


class _Pool:
    """The connections of one server that owe no answer, oldest first: those silent since they
    opened or since their last answer, then those part-way through sending a request. When the
    connection cap is reached, the oldest of them gives way to the newcomer, so that idle sockets
    can never lock out a client with a request to make."""

    def __init__(self) -> None:
        self.silent: dict[_BoundedProtocol, None] = {}
        self.partial: dict[_BoundedProtocol, None] = {}
        self.leaving = 0  # closed to make room, not yet gone from uvicorn's connection set

    def mark(self, connection: _BoundedProtocol, tier: dict[_BoundedProtocol, None] | None) -> None:
        self.silent.pop(connection, None)
        self.partial.pop(connection, None)
        if tier is not None:
            tier[connection] = None  # at the end: the newest of its tier

    def oldest(self) -> _BoundedProtocol | None:
        for tier in (self.silent, self.partial):
            for connection in tier:
                return connection
        return None


class _Flow(internals.FlowControl):
    """uvicorn's flow control, except that reading stays paused while bytes parsed ahead of
    MAX_PIPELINE requests wait: uvicorn resumes reading after every answer, and each read could
    queue thousands more requests."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self.held = False
        self.resume_wanted = False  # a resume asked for while held, applied on release

    def pause_reading(self) -> None:
        self.resume_wanted = False
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.held:
            self.resume_wanted = True
        else:
            super().resume_reading()

    def hold(self) -> None:
        super().pause_reading()
        self.held, self.resume_wanted = True, True

    def release(self) -> None:
        self.held = False
        if self.resume_wanted:
            super().resume_reading()


class _BoundedProtocol(internals.ProtocolBase):
    """uvicorn's httptools protocol with every client's hold on the server bounded.

    - Receiving: a deadline on each request, from its first byte (or the connection's opening)
      until its body is complete, answered 408 if a request had begun; a bound on its head.
    - Pipelining: at most MAX_PIPELINE requests parsed ahead of their answers; the bytes after
      them wait unparsed (at most one read) with reading paused.
    - Sending: a client that reads nothing of its answer for the receive timeout is cut off, so
      it cannot hold a reply's memory by never draining the socket.
    - Connections: over the cap, the oldest connection that owes no answer gives way; only when
      every connection has a request being answered is a newcomer refused (503).
    - Draining: an idle connection stays open briefly, so that a request already on its way is
      answered (503) rather than reset.
    Every refusal is answered in JSON, as every other error is.
    """

    receive_timeout_s = 5.0  # set per server by `HttpServer`: --receive-timeout-s
    max_connections = 1024  # and --http-max-connections
    pool: _Pool  # and one pool per server

    # As uvicorn's own: asyncio.Protocol declares a BaseTransport, a TCP server gives a Transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._receipt: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the request line and headers the parser has handed over
        self._head_fed = 0  # bytes fed since the last head ended: the parser holds a part-value
        self._in_body = False
        self._body_left = 0  # of the request being parsed, by its Content-Length
        self._begun = False  # a request has begun to arrive and is not complete
        self._held = b""
        self._leaving = self._draining = False
        super().connection_made(transport)
        self._flow = _Flow(transport)
        self.install_flow(self._flow)
        if self.open_connections - self.pool.leaving > self.max_connections:
            oldest = self.pool.oldest()  # before this one joins the pool: it never gives way to itself
            if oldest is None:
                limit = self.max_connections
                self._refuse(503, f"over {limit} HTTP connections are answering requests; retry")
                return
            oldest._give_way()
        self.pool.mark(self, self.pool.silent)
        crowded = self.open_connections > self.max_connections // 2
        self._arm(min(PRESSURE_FIRST_BYTE_S, self.receive_timeout_s) if crowded else None)

    def data_received(self, data: bytes) -> None:
        if self._held:  # read in the same turn as the bytes held: they wait behind them
            self._held += data
            if len(self._held) > MAX_HELD_BYTES:
                self._close(f"a client pipelined over {MAX_HELD_BYTES} bytes ahead of its answers")
            return
        if self.newest_answered:  # between requests: a new one begins
            self._arm()
        self.cancel_keep_alive()
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        """Parse `data`, a slice at a time, until MAX_PIPELINE requests wait for their answers."""
        start = 0
        try:
            while start < len(data):
                if self.queued >= MAX_PIPELINE:
                    self._held = bytes(data[start:])
                    self._flow.hold()
                    return
                end = start + self._body_left + FEED_SLICE
                if not self._in_body:  # a head's bytes, and at most a slice of what follows it
                    self._head_fed += min(end, len(data)) - start
                self.parse(data[start:end])
                if not self._in_body and self._head_fed > MAX_HEAD_BYTES + FEED_SLICE:
                    raise _HeadTooLarge
                start = end
        except internals.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served here")
        except internals.HttpParserError as exc:
            if isinstance(internals.callback_error(exc), _HeadTooLarge) or self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
            else:
                self._refuse(400, "not a valid HTTP/1.1 request")
        except _HeadTooLarge:
            self._refuse_head()

    def on_message_begin(self) -> None:
        self._head_bytes, self._body_left, self._begun = 0, 0, True
        if self.newest_answered:
            self._arm()
            if self in self.pool.silent:
                self.pool.mark(self, self.pool.partial)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if name.lower() == b"content-length" and is_count(value.strip().decode("latin-1")):
            self._body_left = int(value)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_body, self._head_fed = True, 0
        super().on_headers_complete()
        if self._draining:
            self.close_after_answer()

    def on_body(self, body: bytes) -> None:
        self._body_left = max(0, self._body_left - len(body))
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        self._body_left, self._begun = 0, False
        answered = self.answer_complete  # answered early (413)
        self.pool.mark(self, self.pool.silent if answered and not self.queued else None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._held:
            held, self._held = self._held, b""
            self._feed(memoryview(held))
            if not self._held:
                self._flow.release()
        if self.body_expected:
            self._arm()  # a pipelined request started now, its body still on the way
        if not self.queued and self.answer_complete:
            self.pool.mark(self, self.pool.partial if self._begun else self.pool.silent)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_sending(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._unwatch_sending()
        super().resume_writing()

    def shutdown(self) -> None:
        self._draining = True
        if self.newest_answered:
            self.loop.call_later(DRAIN_LINGER_S, self._close_if_idle)
        else:
            self.close_after_answer()

    def timeout_keep_alive_handler(self) -> None:
        self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unwatch_sending()  # uvicorn's own connection_lost resumes a paused writer
        self.pool.mark(self, None)
        if self._leaving:
            self.pool.leaving -= 1
            self._leaving = False
        super().connection_lost(exc)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge  # httptools stops parsing and raises HttpParserCallbackError

    def _refuse_head(self) -> None:
        self._refuse(431, f"request line and headers over {MAX_HEAD_BYTES} bytes")

    def _give_way(self) -> None:
        """Close to make room for a new connection (this one owes no answer)."""
        self.pool.mark(self, None)
        self._leaving = True
        self.pool.leaving += 1
        if self._begun:
            self._refuse(503, "closed to make room for other connections before the request arrived; retry")
        else:
            self._close()

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        self.pool.mark(self, None)
        if self.answer_under_way:
            self.transport.abort()  # an answer is under way: no other can be written
            return
        self.transport.write(_refusal(status, message))
        self._close()

    def _close(self, why: str | None = None) -> None:
        """Close, or abort when the client has not read what was written: a client that never
        reads could otherwise keep a closing connection, and its buffer, forever."""
        if why is not None:
            log.info("closing an HTTP connection: %s", why)
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def _close_if_idle(self) -> None:
        idle = not self._begun and not self.queued and self.newest_answered
        if idle and not self.transport.is_closing():
            self._close()

    def _arm(self, seconds: float | None = None) -> None:
        if self._receipt is None:
            self._receipt = self.loop.call_later(seconds or self.receive_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._receipt is not None:
            self._receipt.cancel()
            self._receipt = None

    def _too_slow(self) -> None:
        self._receipt = None
        if self._begun:
            timeout = self.receive_timeout_s
            self._refuse(408, f"the request took over {timeout:g} s to arrive (--receive-timeout-s)")
        else:
            self._close()  # sent nothing, or blank lines: there is nothing to answer

    def _watch_sending(self, unsent: int) -> None:
        self._stall = self.loop.call_later(self.receive_timeout_s, self._check_sending, unsent)

    def _unwatch_sending(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _check_sending(self, unsent: int) -> None:
        now = self.transport.get_write_buffer_size()
        if now < unsent:
            self._watch_sending(now)  # the client is reading, however slowly
        else:
            self._stall = None
            timeout = self.receive_timeout_s
            log.info("aborting an HTTP connection whose client read nothing for %.1f s", timeout)
            self.transport.abort()


def bind(host: str | None, port: int, shared: bool = False, what: str = "listen for HTTP") -> socket.socket:
    """The listening socket, bound now so that a port in use fails start-up before anything serves.
    `host`: None or "" binds every address.
    `shared`: a worker's, SO_REUSEPORT like its gRPC port (the supervisor checked it was free)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ModelLoadError(f"cannot {what} on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ModelLoadError(f"cannot {what} on {host}:{port}: {exc.strerror}; is the port in use?") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """uvicorn on the running loop, over a socket from `bind`, with every client bounded
    (`_BoundedProtocol`)."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        receive_timeout_s: float,
        max_connections: int,
        keep_alive_s: float,
        tls: TLSSettings | None = None,
    ) -> None:
        protocol = type(
            "BoundedProtocol",
            (_BoundedProtocol,),
            {"receive_timeout_s": receive_timeout_s, "max_connections": max_connections, "pool": _Pool()},
        )
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,  # uvicorn refreshes it only in a main loop this server does not run
            # uvicorn annotates it int, but only hands it to call_later: a float is what it takes.
            timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
            **({} if tls is None else _tls_options(tls)),
        )
        self._tls = internals.loaded_tls(config)
        if self._tls is not None:
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._receive_timeout_s = receive_timeout_s
        self.port: int = sock.getsockname()[1]

    async def start(self) -> None:
        """Listen, with a TLS handshake deadline (the receive timeout): uvicorn passes none, so
        asyncio's 60 s default would let silent connections pile up before the receive deadline
        (armed once the handshake is done) could reach them."""
        handshake_s = None if self._tls is None else self._receive_timeout_s  # asyncio: none without TLS
        await internals.start(self._server, self._sock, handshake_s)

    async def stop(self, grace: float) -> None:
        """Close the port and every connection once its answer is sent (an idle one after
        DRAIN_LINGER_S); requests still running get `grace` seconds (what the drain left of
        --drain-grace-s, at least the CLOSE_S it kept for this)."""
        handshake_s = None if self._tls is None else self._receive_timeout_s
        await internals.stop(self._server, self._sock, grace, handshake_s)


def _tls_options(tls: TLSSettings) -> dict[str, Any]:
    return {
        "ssl_certfile": tls.tls_cert,
        "ssl_keyfile": tls.tls_key,
        "ssl_ca_certs": tls.tls_client_ca,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.tls_client_ca else ssl.CERT_NONE,
    }
