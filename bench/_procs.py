"""Start a server process on a free loopback port and learn the port from its log line.

The one helper for this: the benchmarks use it, and so do the tests (tests/support.py).
"""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
import time

__all__ = ["free_port", "start_server", "start_server_ports"]


def start_server(
    args: list[str],
    pattern: str = r"serving on [\d.]+:(\d+)",
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, int]:
    proc, ports = start_server_ports(args, pattern, timeout, env)
    return proc, ports[0]


def start_server_ports(
    args: list[str], pattern: str, timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, tuple[int, ...]]:
    """The process, and every port `pattern`'s groups find in its start-up line. `env`: its
    environment (default: this process's)."""
    proc = subprocess.Popen([sys.executable, *args], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    seen = []
    with selectors.DefaultSelector() as waiting:  # a silent process cannot block past the deadline
        waiting.register(proc.stderr, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and waiting.select(left):
            line = proc.stderr.readline()
            seen.append(line)
            if found := re.search(pattern, line):
                return proc, tuple(int(port) for port in found.groups())
            if not line and proc.poll() is not None:
                break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{args[-1] if args else 'server'}: did not start:\n" + "".join(seen))


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
