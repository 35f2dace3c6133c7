"""The server's three ports (gRPC, HTTP, metrics): each checked free before anything is loaded, and
the addresses a person opens once they serve.

Nothing heavy is imported here: the command line checks the ports before it imports the server, so
a port in use is one line at once, not after the imports and the model load.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from vae_serve.errors import PortError

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["check_port_free", "check_ports_free", "ready_line"]

_ANY_ADDRESS = ("", "0.0.0.0", "::")  # listening on every interface: a person opens localhost


def check_port_free(host: str, port: int, what: str = "listen", flag: str = "") -> None:
    """Fail with a plain message (naming `flag` when given) before gRPC logs its own bind error
    over several lines. `what`: the failure's verb, as the bind itself words it."""
    if port == 0:
        return
    named = f" ({flag})" if flag else ""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortError(f"cannot {what} on {host}:{port}: {exc.strerror}{named}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise PortError(f"cannot {what} on {host}:{port}: {exc.strerror}{named}") from None


def check_ports_free(settings: Settings) -> None:
    """Every port the server will bind (gRPC, HTTP unless --no-http, metrics), so that a busy one
    fails start-up before the model loads. The binds still fail cleanly if one is taken since."""
    check_port_free(settings.host, settings.port, "listen", "--port")
    if settings.http:
        check_port_free(settings.http_host or "", settings.http_port, "listen for HTTP", "--http-port")
    check_port_free(settings.metrics_host or "", settings.metrics_port, "serve metrics", "--metrics-port")


def _where(host: str, port: int) -> str:
    shown = "localhost" if host in _ANY_ADDRESS else host
    return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"


def ready_line(settings: Settings, port: int, http_port: int | None, metrics_port: int) -> str:
    """One line with what a person opens now: the playground, the API docs, the gRPC address and the
    metrics, at the ports really bound (`http_port` None: no HTTP)."""
    tls = settings.tls_cert is not None
    parts = []
    if http_port is not None:
        web = f"{'https' if tls else 'http'}://{_where(settings.http_host or '', http_port)}"
        if settings.playground:
            parts.append(f"playground {web}/")
        parts.append(f"API docs {web}/docs")
    parts.append(f"gRPC {_where(settings.host, port)}{' (TLS)' if tls else ''}")
    parts.append(f"metrics http://{_where(settings.metrics_host or '', metrics_port)}/metrics")
    return "ready: " + ", ".join(parts)
