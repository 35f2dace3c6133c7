"""Server processes for the tests and the benchmarks: a free loopback port to give one, its start
learned from its log line, and the ports it listens on.

Standard library only, so that the benchmarks (`python bench/x.py`) can import it without the
server's code or the tests' fixtures; the tests take these names from support.py.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import shutil
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["free_port", "listening_ports", "read_until", "start_nginx", "start_server", "start_server_ports"]


def start_server(
    args: list[str], pattern: str = r"serving on [\d.]+:(\d+)", timeout: float = 60, **popen: Any
) -> tuple[subprocess.Popen, int]:
    proc, ports = start_server_ports(args, pattern, timeout, **popen)
    return proc, ports[0]


def start_server_ports(
    args: list[str], pattern: str, timeout: float = 60, **popen: Any
) -> tuple[subprocess.Popen, tuple[int, ...]]:
    """The process, and every port `pattern`'s groups find in its start-up line. `popen`: more
    arguments for subprocess.Popen (env, cwd)."""
    proc = subprocess.Popen([sys.executable, *args], stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + timeout
    seen, line = [], bytearray()
    # A byte at a time, below proc.stderr's buffer: a buffered readline can take in the line after
    # the one it returns, and select() would then wait for data already read (two lines written
    # together, as a loaded machine delivers them). Whatever follows the start-up line stays unread.
    fd = proc.stderr.fileno()
    with selectors.DefaultSelector() as waiting:  # a silent process cannot block past the deadline
        waiting.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and waiting.select(left):
            byte = os.read(fd, 1)
            line += byte
            if byte and byte != b"\n":
                continue
            text = line.decode(errors="replace")
            seen.append(text)
            line.clear()
            if found := re.search(pattern, text):
                return proc, tuple(int(port) for port in found.groups())
            if not byte and proc.poll() is not None:
                break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{args[-1] if args else 'server'}: did not start:\n" + "".join(seen))


def read_until(proc: subprocess.Popen, pattern: str) -> None:
    """Read the process's log until a line matches; fails if it ends first."""
    seen = []
    while line := proc.stderr.readline():
        seen.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"no {pattern!r} before exit {proc.wait()}:\n" + "".join(seen))


# Ports handed out come from below the kernel's ephemeral range (or above it), which bind(0) and
# outgoing connections never take: between free_port() and the server's bind, nothing else on the
# machine is given the port by the kernel. Test processes running side by side (pytest-xdist
# workers, another checkout's suite) agree through a claim: an abstract Unix socket named after the
# port, held while the process lives and released by the kernel when it ends, however it ends.
_CLAIMS: list[socket.socket] = []
_CLAIM_NAME = "\0vae-serve-test-port-{}"


def _claimable_ports() -> range:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(20000, low) if low - 20000 >= 1000 else range(high + 1, 65536)


def _bindable(port: int) -> bool:
    """Whether a server could bind `port` now: nothing listens on it or holds it in TIME_WAIT."""
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on, never handed to any other test process on this machine
    while this one runs (nor twice to this one): a server given a port another server was also
    given fails to bind."""
    ports = _claimable_ports()
    start = random.SystemRandom().randrange(len(ports))  # apart from other processes' first picks
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        claim = socket.socket(socket.AF_UNIX)
        try:
            claim.bind(_CLAIM_NAME.format(port))
        except OSError:  # claimed by another test process, or by this one
            claim.close()
            continue
        if _bindable(port):
            _CLAIMS.append(claim)
            return port
        claim.close()
    raise RuntimeError(f"no free port in {ports}")


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (IPv4 and IPv6), from /proc."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in sockets:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


NGINX_TEMPLATE = (
    Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "templates" / "vae-serve.conf.template"
)


def start_nginx(
    folder: Path, upstreams: list[int], http_upstreams: list[int], timeout: float = 30
) -> tuple[subprocess.Popen, int, int]:
    """Debian's nginx in the foreground with the deployment's template, rendered as compose's nginx
    image would, in front of two gRPC and two HTTP upstreams on loopback (the same port twice
    makes one replica): the process, and its gRPC and HTTP ports once it listens on both."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        raise RuntimeError("nginx not found: `make test` installs Debian's nginx")
    port, http_port = free_port(), free_port()
    site = string.Template(NGINX_TEMPLATE.read_text()).substitute(
        GRPC_UPSTREAM_1=f"127.0.0.1:{upstreams[0]}",
        GRPC_UPSTREAM_2=f"127.0.0.1:{upstreams[1]}",
        NGINX_GRPC_PORT=port,
        HTTP_UPSTREAM_1=f"127.0.0.1:{http_upstreams[0]}",
        HTTP_UPSTREAM_2=f"127.0.0.1:{http_upstreams[1]}",
        NGINX_HTTP_PORT=http_port,
    )
    (folder / "vae-serve.conf").write_text(site)
    temp = " ".join(
        f"{kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {folder}/nginx.pid; error_log {folder}/error.log warn;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{ access_log off; {temp} include {folder}/vae-serve.conf; }}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf")], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    while {port, http_port} - listening_ports(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            stderr = proc.communicate()[1].decode(errors="replace")
            raise RuntimeError(f"nginx did not start:\n{stderr}")
        time.sleep(0.01)
    return proc, port, http_port
