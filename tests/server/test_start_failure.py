"""A server that cannot start leaves nothing behind: no port held, no thread serving metrics."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from support import REPOSITORY, free_port

from vae_serve.errors import PortError
from vae_serve.server.app import VaeServer
from vae_serve.server.settings import Settings
from vae_serve.server.telemetry.metrics import Metrics


def can_bind(port: int) -> bool:
    """Whether 127.0.0.1:port could be bound now (no SO_REUSEADDR: a listener still there blocks it)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def metrics_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "metrics" and t.is_alive()]


@pytest.fixture
def taken_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def failing_start(port: int, metrics_port: int) -> VaeServer:
    settings = Settings(
        model_repository=REPOSITORY,
        host="127.0.0.1",
        port=port,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
    )
    server = VaeServer(settings, Metrics())
    with pytest.raises(PortError, match=r"cannot (listen|serve metrics) on 127\.0\.0\.1:"):
        asyncio.run(server.start())
    return server


def test_grpc_port_taken_leaves_no_metrics_server(taken_port):
    before = len(metrics_threads())
    metrics_port = free_port()
    server = failing_start(taken_port, metrics_port)
    assert server._metrics_http is None
    assert can_bind(metrics_port)
    assert len(metrics_threads()) == before


def test_metrics_port_taken_leaves_no_grpc_port(taken_port):
    port = free_port()
    server = failing_start(port, taken_port)
    assert server._server is None
    assert can_bind(port)


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("port", "cannot listen on 127.0.0.1:{port}: Address already in use (--port)"),
        ("http_port", "cannot listen for HTTP on 127.0.0.1:{port}: Address already in use (--http-port)"),
        ("metrics_port", "cannot serve metrics on 127.0.0.1:{port}: Address already in use (--metrics-port)"),
    ],
)
def test_a_busy_port_fails_before_the_model_loads(taken_port, monkeypatch, flag, says):
    """Each of the three ports is checked before the model loads: a busy one costs no load."""
    ports = {"port": 0, "http_port": 0, "metrics_port": 0, flag: taken_port}
    settings = Settings(model_repository=REPOSITORY, host="127.0.0.1", metrics_host="127.0.0.1", **ports)
    server = VaeServer(settings, Metrics())

    def never(_self: VaeServer) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(VaeServer, "load", never)
    with pytest.raises(PortError) as caught:
        asyncio.run(server.start())
    assert str(caught.value) == says.format(port=taken_port)
    assert not server.dataplane.loaded and server._metrics_http is None
