"""uvicorn and httptools beyond their documented API: all that serve.py needs of their insides.

serve.py bounds what each HTTP client can hold, which takes uvicorn's connection handling from
the inside: no setting or public hook reaches it (uvicorn documents `Config`, `Server.serve` and
`run`; its protocols and `Server.startup` are implementation). What this module relies on:

- `HttpToolsProtocol`, the protocol uvicorn builds per connection (`Config(http=...)` takes the
  class). `ProtocolBase` extends it, and serve.py overrides these hooks, each called as noted:
  the httptools parser callbacks (`on_message_begin`, `on_url`, `on_header`,
  `on_headers_complete`, `on_body`, `on_message_complete`); `data_received`, replaced whole to
  feed the parser in slices; `on_response_complete`, which the request cycle calls once an answer
  is sent; `shutdown`, which `Server.shutdown` calls on every connection; and
  `timeout_keep_alive_handler`, run by the keep-alive timer armed after an answer.
- Its state, read here under names of our own: `connections` (the server's set, joined in
  `connection_made` and left in `connection_lost`), `pipeline` (requests parsed ahead of their
  answers), `cycle` (the newest request's `RequestResponseCycle`, with `response_started`,
  `response_complete`, `more_body` and `keep_alive`), `parser` and `flow`; serve.py also uses
  `loop` and `transport` as they are.
- `_unset_keepalive_if_required`, the private method that cancels the keep-alive timer: a
  replaced `data_received` must cancel it first, as uvicorn's own does.
- `FlowControl`: uvicorn pauses reading through `flow.pause_reading()` (a pipelined request, a
  large body) and resumes it through `flow.resume_reading()` after each answer, so a subclass
  installed as the connection's `flow` in `connection_made` sees every pause and resume.
- `Server.startup`, re-implemented by `start` because it passes no TLS handshake deadline (so
  asyncio's 60 s applies): the protocols are built as `config.http_protocol_class(config=,
  server_state=, app_state=)`, and `Server.lifespan`, `Server.servers` and `Server.started` are
  set as `Server.shutdown(sockets=)` expects, which reads `config.timeout_graceful_shutdown` when
  called. `Config.load` builds `config.ssl`, the TLS context, which is otherwise out of reach.
- httptools: a callback that raises stops the parser, and `feed_data` then raises an
  `HttpParserError` whose `__context__` is the callback's exception (its documentation says
  nothing of callbacks that raise); the parser has no other way to be stopped.

`WRITTEN_FOR` holds the versions this was written for, the ranges pyproject.toml allows;
tests/server/http/test_uvicorn_internals.py checks every point above against the installed
packages: run it before raising either cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = [
    "WRITTEN_FOR",
    "FlowControl",
    "HttpParserError",
    "HttpParserUpgrade",
    "ProtocolBase",
    "callback_error",
    "loaded_tls",
    "start",
    "stop",
]

# Distribution: (lowest version, first version not allowed), as pyproject.toml's lines say.
WRITTEN_FOR = {"uvicorn": ("0.30", "0.56"), "httptools": ("0.6", "0.10")}

HttpParserError = httptools.HttpParserError
HttpParserUpgrade = httptools.HttpParserUpgrade


def callback_error(exc: HttpParserError) -> BaseException | None:
    """The exception a parser callback raised to stop the parser, when `exc` is what followed."""
    return exc.__context__


class ProtocolBase(HttpToolsProtocol):
    """uvicorn's httptools protocol, with what serve.py reads of its state under names of its own."""

    def cancel_keep_alive(self) -> None:
        """Cancel the keep-alive timer, as uvicorn's `data_received` does before parsing."""
        self._unset_keepalive_if_required()

    def parse(self, data: memoryview) -> None:
        self.parser.feed_data(data)

    def install_flow(self, flow: FlowControl) -> None:
        """Pause and resume reading through `flow`: every request cycle made from now on uses it."""
        self.flow = flow

    @property
    def open_connections(self) -> int:
        """The server's connections, this one included from `connection_made` to `connection_lost`."""
        return len(self.connections)

    @property
    def queued(self) -> int:
        """Requests parsed while an earlier one is answered, waiting to start."""
        return len(self.pipeline)

    @property
    def newest_answered(self) -> bool:
        """No request has begun, or the newest one's answer is complete."""
        return self.cycle is None or self.cycle.response_complete

    @property
    def answer_complete(self) -> bool:
        """A request has begun, and the newest one's answer is complete."""
        return self.cycle is not None and self.cycle.response_complete

    @property
    def answer_under_way(self) -> bool:
        """The newest request's answer has started and is not complete: no other can be written."""
        cycle = self.cycle
        return cycle is not None and cycle.response_started and not cycle.response_complete

    @property
    def body_expected(self) -> bool:
        """The newest request is not yet answered, and more of its body is to come."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and cycle.more_body

    def close_after_answer(self) -> None:
        """Close the connection once the newest request is answered, rather than keep it alive."""
        if self.cycle is not None:
            self.cycle.keep_alive = False


def loaded_tls(config: uvicorn.Config) -> ssl.SSLContext | None:
    """Load `config` (as `Server.serve` would) and return the TLS context it built, or None."""
    config.load()
    return config.ssl


def _protocol_factory(server: uvicorn.Server) -> Callable[[], asyncio.Protocol]:
    config = server.config

    def protocol() -> asyncio.Protocol:
        # uvicorn types it as any asyncio.Protocol class; its HTTP protocols take these arguments.
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server.server_state, app_state=server.lifespan.state
        )

    return protocol


async def start(server: uvicorn.Server, sock: socket.socket, handshake_timeout_s: float | None) -> None:
    """What `Server.startup` does for one listening socket, with a TLS handshake deadline."""
    config = server.config
    server.lifespan = config.lifespan_class(config)  # "off": its startup and shutdown do nothing
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        _protocol_factory(server),
        sock=sock,
        ssl=config.ssl,
        backlog=config.backlog,
        ssl_handshake_timeout=handshake_timeout_s,
    )
    server.servers = [listener]
    server.started = True


async def stop(
    server: uvicorn.Server, sock: socket.socket, grace_s: float, handshake_timeout_s: float | None = None
) -> None:
    """Close `sock` and idle connections, and give requests still running `grace_s` seconds.

    Closing a listening socket resets the connections the kernel has queued on it, whose clients
    may have sent a request already; so they are accepted first, in the same turn of the loop as
    the close, and served as every other connection is in a drain (a 503, then closed). Before
    that the loop stops accepting and gets one turn: a connection it accepted already is made into
    a transport in a task of its own, which a closed asyncio server would drop (reset)."""
    # uvicorn annotates it int | None, but only hands it to asyncio.timeout, which takes a float.
    server.config.timeout_graceful_shutdown = max(grace_s, 0.0)  # type: ignore[assignment]
    if not server.started:
        sock.close()
        return
    loop = asyncio.get_running_loop()
    loop.remove_reader(sock.fileno())
    await asyncio.sleep(0)  # the tasks making accepted connections were scheduled before this one
    queued = []
    with contextlib.suppress(OSError):  # BlockingIOError: the queue is empty
        while True:
            queued.append(sock.accept()[0])
    for listener in server.servers:
        listener.close()
    protocol, tls = _protocol_factory(server), server.config.ssl
    for connection in queued:
        connection.setblocking(False)
    accepted = await asyncio.gather(
        *(
            loop.connect_accepted_socket(protocol, c, ssl=tls, ssl_handshake_timeout=handshake_timeout_s)
            for c in queued
        ),
        return_exceptions=True,  # a failed handshake is that client's alone
    )
    for connection, result in zip(queued, accepted, strict=True):
        if isinstance(result, BaseException):
            connection.close()
    await server.shutdown(sockets=[sock])
