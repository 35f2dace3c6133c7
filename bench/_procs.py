"""Start a server process on a free loopback port and learn the port from its log line.

The one helper for this: the benchmarks use it, and so do the tests (tests/support.py).
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = ["free_port", "start_server", "start_server_ports"]


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


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on right now, and never one this process handed out before:
    the kernel may offer a just-released port again, and a server given it twice fails to bind."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
