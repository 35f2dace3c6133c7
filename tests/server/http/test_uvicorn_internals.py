"""uvicorn_internals.py against the installed uvicorn and httptools.

Each point its docstring lists is checked here: the versions, the signatures of what it calls or
overrides, the code it re-implements, and, on a protocol fed bytes over a fake transport, that
uvicorn still calls its hooks as serve.py assumes. A failure names what changed in uvicorn: run
this file before raising the caps in pyproject.toml, and after any upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
import pytest
import uvicorn
from support import PATIENCE_S
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from version_pins import check_written_for

from vae_serve.server.http import uvicorn_internals as internals

CHANGED = "uvicorn changed under server/http/uvicorn_internals.py"


@pytest.mark.parametrize("distribution", sorted(internals.WRITTEN_FOR))
def test_the_installed_version_is_one_the_adapter_was_written_for(distribution: str) -> None:
    check_written_for(distribution, internals.WRITTEN_FOR, "server/http/uvicorn_internals.py")


def _shape(function: Callable[..., Any]) -> str:
    """A signature without its annotations: "(self, sockets=None)"."""
    signature = inspect.signature(function)
    parameters = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=signature.empty))


SIGNATURES = {
    # Called by the adapter.
    (HttpToolsProtocol, "__init__"): "(self, config, server_state, app_state, _loop=None)",
    (HttpToolsProtocol, "_unset_keepalive_if_required"): "(self)",
    (internals.FlowControl, "__init__"): "(self, transport)",
    (uvicorn.Server, "__init__"): "(self, config)",
    (uvicorn.Server, "startup"): "(self, sockets=None)",
    (uvicorn.Server, "shutdown"): "(self, sockets=None)",
    (uvicorn.Config, "load"): "(self)",
    # Overridden by serve.py, and called by uvicorn or httptools.
    (HttpToolsProtocol, "connection_made"): "(self, transport)",
    (HttpToolsProtocol, "connection_lost"): "(self, exc)",
    (HttpToolsProtocol, "data_received"): "(self, data)",
    (HttpToolsProtocol, "on_message_begin"): "(self)",
    (HttpToolsProtocol, "on_url"): "(self, url)",
    (HttpToolsProtocol, "on_header"): "(self, name, value)",
    (HttpToolsProtocol, "on_headers_complete"): "(self)",
    (HttpToolsProtocol, "on_body"): "(self, body)",
    (HttpToolsProtocol, "on_message_complete"): "(self)",
    (HttpToolsProtocol, "on_response_complete"): "(self)",
    (HttpToolsProtocol, "pause_writing"): "(self)",
    (HttpToolsProtocol, "resume_writing"): "(self)",
    (HttpToolsProtocol, "shutdown"): "(self)",
    (HttpToolsProtocol, "timeout_keep_alive_handler"): "(self)",
    (internals.FlowControl, "pause_reading"): "(self)",
    (internals.FlowControl, "resume_reading"): "(self)",
}


@pytest.mark.parametrize(("owner", "name"), list(SIGNATURES), ids=lambda x: getattr(x, "__name__", x))
def test_what_the_adapter_calls_or_overrides_keeps_its_signature(owner: type, name: str) -> None:
    member = getattr(owner, name, None)
    _expect(member is not None, f"{owner.__qualname__}.{name} is gone")
    assert _shape(member) == SIGNATURES[owner, name], (
        f"{CHANGED}: {owner.__qualname__}.{name} is now {_shape(member)}, was {SIGNATURES[owner, name]}"
    )


# The code that the adapter or serve.py re-implements, by the SHA-256 of its source. A new value
# means uvicorn changed it: read the new code, carry what applies into the re-implementation (named
# beside it), then record the new value.
REIMPLEMENTED = {
    (uvicorn.Server, "startup"): (
        "uvicorn_internals.start",
        "2aa1d70a244bfcf21a1ae57e0152f9c20e40f756ffc328ccc58037f6ae8e2dfc",
    ),
    (HttpToolsProtocol, "data_received"): (
        "serve._BoundedProtocol.data_received",
        "010a7ae59a5d3b1a5e7326ce246878568629d126a076d8af5ba10cab040fae43",
    ),
    (HttpToolsProtocol, "shutdown"): (
        "serve._BoundedProtocol.shutdown",
        "d7351fa33f00d430e0a4179912a4ed478e0483ce3a9f7409225e71970c064421",
    ),
    (HttpToolsProtocol, "timeout_keep_alive_handler"): (
        "serve._BoundedProtocol.timeout_keep_alive_handler",
        "8b53bf5f2e202970f6f6c0338a5c381c66efce4e9c673b05175d858eef5fd888",
    ),
}


@pytest.mark.parametrize(("owner", "name"), list(REIMPLEMENTED), ids=lambda x: getattr(x, "__name__", x))
def test_the_code_re_implemented_here_is_unchanged(owner: type, name: str) -> None:
    ours, recorded = REIMPLEMENTED[owner, name]
    digest = hashlib.sha256(inspect.getsource(getattr(owner, name)).encode()).hexdigest()
    assert digest == recorded, (
        f"{CHANGED}: {owner.__qualname__}.{name} is not the code {ours} re-implements any more: "
        f"read the new one, carry over what applies, then record its digest {digest}"
    )


HOOKS = (
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "shutdown",
    "timeout_keep_alive_handler",
)
HEAD = ["on_message_begin", "on_url", "on_header", "on_headers_complete"]


class _Recording(internals.ProtocolBase):
    """The adapter's protocol, noting each hook uvicorn or httptools calls (as serve.py's overrides)."""

    made: ClassVar[list[_Recording]] = []  # every instance, for a test to find

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.calls: list[str] = []
        self.made.append(self)
        super().connection_made(transport)


def _recorded(name: str) -> Callable[..., Any]:
    def hook(self: _Recording, *args: Any) -> Any:
        self.calls.append(name)
        return getattr(super(_Recording, self), name)(*args)

    return hook


for _name in HOOKS:
    setattr(_Recording, _name, _recorded(_name))


class _Flow(internals.FlowControl):
    def __init__(self, transport: asyncio.Transport, calls: list[str]) -> None:
        super().__init__(transport)
        self.calls = calls

    def pause_reading(self) -> None:
        self.calls.append("flow.pause_reading")
        super().pause_reading()

    def resume_reading(self) -> None:
        self.calls.append("flow.resume_reading")
        super().resume_reading()


class _Transport(asyncio.Transport):
    """As much of a TCP transport as uvicorn's protocol uses, keeping what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _App:
    """Answers each path when the test lets it: the head once `start[path]` is set, the body once
    `finish[path]` is."""

    def __init__(self, gated: bool = True) -> None:
        self.gated = gated
        self.start: dict[str, asyncio.Event] = {}
        self.finish: dict[str, asyncio.Event] = {}

    def let(self, path: str, *, head: bool = True, body: bool = True) -> None:
        if head:
            self.start.setdefault(path, asyncio.Event()).set()
        if body:
            self.finish.setdefault(path, asyncio.Event()).set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        while (await receive()).get("more_body"):
            pass
        if self.gated:
            await self.start.setdefault(path, asyncio.Event()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        if self.gated:
            await self.finish.setdefault(path, asyncio.Event()).wait()
        await send({"type": "http.response.body", "body": b"ok"})


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"{CHANGED}: {what}")


def _config(app: _App, keep_alive_s: float = 5.0) -> uvicorn.Config:
    options = {"lifespan": "off", "log_config": None, "access_log": False, "timeout_keep_alive": keep_alive_s}
    config = uvicorn.Config(app, http=_Recording, **options)
    _expect(internals.loaded_tls(config) is None, "Config.load builds a TLS context with no TLS asked")
    return config


def _connect(app: _App, keep_alive_s: float = 5.0) -> tuple[_Recording, _Transport]:
    """A connection as `uvicorn_internals.start` builds one, made over a fake transport."""
    config = _config(app, keep_alive_s)
    server = uvicorn.Server(config)
    protocol = config.http_protocol_class(config=config, server_state=server.server_state, app_state={})
    _expect(isinstance(protocol, _Recording), "Config(http=<class>) no longer builds that class")
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def _feed(protocol: _Recording, data: bytes) -> None:
    """What serve.py's `data_received` does before its own bounds: cancel the keep-alive, parse."""
    protocol.cancel_keep_alive()
    protocol.parse(memoryview(data))


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Polled on this loop (the protocol under test runs on it): a thread would race it."""
    deadline = asyncio.get_running_loop().time() + PATIENCE_S
    while not condition():
        _expect(asyncio.get_running_loop().time() < deadline, what)
        await asyncio.sleep(0.001)


async def _until_answered(protocol: _Recording, answers: int = 1) -> None:
    missing = f"no on_response_complete after {answers} answer(s)"
    await _until(lambda: protocol.calls.count("on_response_complete") >= answers, missing)


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode()


async def _finish(protocol: _Recording) -> None:
    for task in list(protocol.tasks):
        task.cancel()
    await asyncio.gather(*protocol.tasks, return_exceptions=True)


def test_a_request_calls_each_hook_and_its_answer_calls_back() -> None:
    async def scenario() -> None:
        app = _App()
        protocol, transport = _connect(app)
        _expect(protocol.open_connections == 1, "connection_made no longer joins the server's connections")
        _expect(protocol.newest_answered, "a new connection has a request cycle before any request")

        _feed(protocol, _get("/a"))
        hooks = [*HEAD, "on_message_complete"]
        _expect(protocol.calls == hooks, f"the parser calls {protocol.calls} for one GET, not {hooks}")
        early = "the request cycle reads complete before its answer began"
        _expect(not protocol.newest_answered and not protocol.answer_complete, early)
        assert not protocol.answer_under_way and protocol.queued == 0

        app.let("/a", body=False)
        began = "the cycle's response_started is not set by an answer's head"
        await _until(lambda: protocol.answer_under_way, began)
        app.let("/a")
        await _until_answered(protocol)
        done = protocol.answer_complete and protocol.newest_answered and not protocol.answer_under_way
        _expect(done, "the cycle's response_complete is not set once the answer is sent")
        assert transport.written.startswith(b"HTTP/1.1 200"), bytes(transport.written)

        timer = protocol.timeout_keep_alive_task
        _expect(timer is not None, "no keep-alive timer (timeout_keep_alive_task) after an answer")
        protocol.cancel_keep_alive()
        cancelled = timer is not None and timer.cancelled()
        _expect(cancelled, "_unset_keepalive_if_required no longer cancels the keep-alive timer")

        protocol.connection_lost(None)
        _expect(protocol.open_connections == 0, "connection_lost no longer leaves the connections")
        await _finish(protocol)

    asyncio.run(scenario())


def test_pipelined_requests_queue_with_reading_paused_through_the_flow() -> None:
    async def scenario() -> None:
        app = _App()
        protocol, transport = _connect(app)
        protocol.install_flow(_Flow(transport, protocol.calls))

        _feed(protocol, _get("/a") + _get("/b"))
        _expect(protocol.queued == 1, "a pipelined request is not queued in `pipeline`")
        paused = "flow.pause_reading" in protocol.calls
        _expect(paused, "a pipelined request no longer pauses reading through the connection's flow")

        app.let("/a")
        await _until_answered(protocol)
        after = protocol.calls[protocol.calls.index("on_response_complete") :]
        _expect("flow.resume_reading" in after, "reading is not resumed through the flow after an answer")
        _expect(protocol.queued == 0, "the queued request did not start when the first was answered")
        assert not protocol.newest_answered

        app.let("/b")
        await _until_answered(protocol, 2)
        assert protocol.answer_complete
        await _finish(protocol)

    asyncio.run(scenario())


def test_a_body_on_its_way_and_closing_after_the_answer() -> None:
    async def scenario() -> None:
        app = _App()
        protocol, transport = _connect(app)
        _feed(protocol, b"POST /a HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\n0123")
        assert protocol.calls == [*HEAD[:-1], "on_header", HEAD[-1], "on_body"], protocol.calls
        _expect(protocol.body_expected, "the cycle's more_body does not say a body is on its way")
        _feed(protocol, b"456789")
        assert protocol.calls[-2:] == ["on_body", "on_message_complete"], protocol.calls
        _expect(not protocol.body_expected, "the cycle's more_body stays set after the whole body")

        protocol.close_after_answer()
        app.let("/a")
        await _until_answered(protocol)
        _expect(transport.closed, "the cycle's keep_alive = False no longer closes after the answer")
        assert b"connection: close" in transport.written
        await _finish(protocol)

    asyncio.run(scenario())


def test_the_keep_alive_timer_calls_its_handler() -> None:
    async def scenario() -> None:
        protocol, transport = _connect(_App(gated=False), keep_alive_s=0.01)
        _feed(protocol, _get("/a"))
        called = "the keep-alive timer no longer calls timeout_keep_alive_handler"
        await _until(lambda: "timeout_keep_alive_handler" in protocol.calls, called)
        assert transport.closed
        await _finish(protocol)

    asyncio.run(scenario())


def test_an_upgrade_stops_the_parser_with_httptools_upgrade() -> None:
    async def scenario() -> None:
        protocol, _ = _connect(_App())
        upgrade = b"GET /a HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        raised = False
        try:
            _feed(protocol, upgrade)
        except internals.HttpParserUpgrade:
            raised = True
        _expect(raised, "an Upgrade request no longer raises HttpParserUpgrade from parse")
        await _finish(protocol)

    asyncio.run(scenario())


class _Stop(Exception):
    pass


class _Stopper:
    """Parser callbacks that raise `_Stop` from the one named."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_url(self, url: bytes) -> None:
        if self.where == "on_url":
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.where == "on_header":
            raise _Stop


@pytest.mark.parametrize("where", ["on_url", "on_header"])
def test_a_callback_that_raises_stops_httptools_and_is_reported(where: str) -> None:
    parser = httptools.HttpRequestParser(_Stopper(where))
    raised: internals.HttpParserError | None = None
    try:
        parser.feed_data(memoryview(_get("/a")))
    except internals.HttpParserError as exc:
        raised = exc
    assert raised is not None, f"httptools changed: an exception raised in {where} no longer stops the parser"
    assert isinstance(internals.callback_error(raised), _Stop), (
        f"httptools changed: an exception raised in {where} is no longer the __context__ of the "
        f"HttpParserError that feed_data raises (got {raised!r} from {raised.__context__!r}); serve.py's "
        "431 for an oversized head depends on it"
    )


def test_start_and_stop_serve_a_socket_and_shut_its_connections_down() -> None:
    async def scenario() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        server = uvicorn.Server(_config(_App(gated=False)))
        _Recording.made.clear()
        await internals.start(server, sock, None)
        assert server.started
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(_get("/a"))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert await reader.readexactly(2) == b"ok"
        _expect(len(_Recording.made) == 1, "start did not build the protocol from http_protocol_class")

        await internals.stop(server, sock, 1.0)
        _expect("shutdown" in _Recording.made[0].calls, "Server.shutdown no longer calls shutdown()")
        _expect(sock.fileno() == -1, "Server.shutdown(sockets=) no longer closes the listening socket")
        _expect(await reader.read() == b"", "shutdown() no longer closes an idle connection")
        writer.close()

    asyncio.run(scenario())


def test_stop_serves_a_connection_still_queued_in_the_kernel() -> None:
    """A client whose connection the kernel accepted, but the loop not yet, has sent its request:
    closing the listener would reset it; stop accepts and answers it first."""

    async def scenario() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        server = uvicorn.Server(_config(_App(gated=False)))
        await internals.start(server, sock, None)
        queued = socket.create_connection(sock.getsockname(), timeout=10)  # the loop has not run since
        queued.sendall(_get("/a"))
        await internals.stop(server, sock, 1.0)
        reply = await asyncio.to_thread(queued.recv, 4096)
        queued.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply

    asyncio.run(scenario())


def test_stop_serves_a_connection_the_loop_accepted_but_had_not_made() -> None:
    """asyncio accepts a connection in one loop turn and makes its transport in a task the turn
    after; a server closed in between drops it, reset with its request unread. Two turns after the
    client sends, the connection is exactly there when stop begins."""

    async def scenario() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        server = uvicorn.Server(_config(_App(gated=False)))
        await internals.start(server, sock, None)
        client = socket.create_connection(sock.getsockname(), timeout=10)
        client.sendall(_get("/a"))
        await asyncio.sleep(0)  # the loop sees the listening socket readable; accepts after this
        await asyncio.sleep(0)  # accepted, its transport's task scheduled after this
        await internals.stop(server, sock, 1.0)
        reply = await asyncio.to_thread(client.recv, 4096)
        client.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply

    asyncio.run(scenario())
