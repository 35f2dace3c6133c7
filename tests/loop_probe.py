"""A probe of a server's event-loop responsiveness: a cheap call every 10 ms from its own process.

    with LoopProbe(target) as probe:
        ...send one hostile request...
    assert probe.max_gap_s < LOOP_STALL_BOUND_S

The probe runs in a separate process (and its own connection) so that nothing the test itself
does, building a 60 MB message say, can hold it up: the gaps it reports are the server's. A gap
is the time between two successive answered health checks, the 10 ms pause included.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

# The bound the hostile-input tests hold the server to. The stalls it guards against were 2.7 s to
# 11 s; on a quiet machine the worst case measures 12-63 ms, but clean CI runs have seen 114 ms (a
# refused 30M-entry shape) and 286 ms (a 25.7 MB body at its limit, minutes after the venv was
# installed: 27-55 ms alone, 46-78 ms beside two busy loops) from the machine, not the request.
# 0.5 s keeps a 5x margin below the smallest stall it must catch.
LOOP_STALL_BOUND_S = 0.5


class LoopProbe:
    def __init__(self, target: str, interval_s: float = 0.01) -> None:
        self.target, self.interval_s = target, interval_s
        self.max_gap_s = float("inf")
        self.calls = 0
        self.errors = 0  # checks that failed (each also ends a gap)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> LoopProbe:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, self.target, str(self.interval_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._proc.stdout.readline().strip() != "ready":  # its first check was answered
            self._proc.kill()
            raise AssertionError(f"loop probe could not reach {self.target}")
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._proc.communicate("stop\n", timeout=30)
        result = json.loads(out)
        self.max_gap_s, self.calls, self.errors = result["max_gap_s"], result["calls"], result["errors"]


def _probe(target: str, interval_s: float) -> None:
    import threading

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    with grpc.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)
        print("ready", flush=True)
        last, max_gap, calls, errors = time.monotonic(), 0.0, 0, 0
        while not stop.is_set():
            time.sleep(interval_s)
            try:
                check(health_pb2.HealthCheckRequest(), timeout=10)
            except grpc.RpcError:
                errors += 1
            now = time.monotonic()
            max_gap, last, calls = max(max_gap, now - last), now, calls + 1
        max_gap = max(max_gap, time.monotonic() - last)  # a loop that never answered again shows too
    print(json.dumps({"max_gap_s": max_gap, "calls": calls, "errors": errors}), flush=True)


if __name__ == "__main__":
    _probe(sys.argv[1], float(sys.argv[2]))
