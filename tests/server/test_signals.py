"""Signals at awkward moments, against real processes: nothing admitted is lost, nothing dies of them.

A SIGHUP ("look for new versions now") can come at any time: while the model loads, while the
supervisor forks, to a worker still starting. Each test waits on a condition (a log line, the
process's mapped libraries, its children), never on a fixed sleep.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from support import PATIENCE_S, REPOSITORY, free_port, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc

SERVE = [sys.executable, "-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1"]

T = TypeVar("T")


class Served:
    """A real `vae-serve` whose stderr a thread collects, so a test can wait on its log lines."""

    def __init__(self, *args: str, wrapper: list[str] | None = None) -> None:
        self.proc = subprocess.Popen([*(wrapper or []), *SERVE, *args], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ended = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line)
        self.ended = True

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def until(self, found: Callable[[], T], what: str) -> T:
        """support.wait_for on `found()`, failing at once, with the log, if the process ends first."""

        def check() -> T:
            ended = self.ended  # read first: the lines read before the end are all seen below
            result = found()
            if not result and ended:
                raise AssertionError(f"exit {self.proc.wait()} before {what}:\n{self.log}")
            return result

        return wait_for(check, what, context=lambda: self.log)

    def line(self, pattern: str) -> re.Match[str]:
        """The first log line's match of `pattern`, once there is one."""
        return self.until(lambda: next(iter(self.matches(pattern)), None), pattern)

    def matches(self, pattern: str) -> list[re.Match[str]]:
        with self._lock:
            return [m for line in self.lines if (m := re.search(pattern, line))]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(10)


class Flood:
    """SIGHUP to each of `pids` every few milliseconds from a thread, counting what was sent."""

    def __init__(self, *pids: int) -> None:
        self.pids = list(pids)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, pid: int) -> None:
        self.pids = [*self.pids, pid]

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                try:
                    os.kill(pid, signal.SIGHUP)
                    self.sent += 1
                except ProcessLookupError:
                    pass
            self._stop.wait(0.003)  # pacing, not synchronisation

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.sent


def sighup_ignored(pid: int) -> bool:
    """True once `pid` ignores SIGHUP (vae-serve's first step) or has gone (let the caller see how)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(ignored & (1 << (signal.SIGHUP - 1)))


def onnxruntime_loaded(pid: int) -> bool:
    return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def answers(target: str, connections: int = 1) -> set[str]:
    """The server ids that answered GetModelInfo over `connections` fresh connections."""
    seen = set()
    for _ in range(connections):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            seen.add(stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=20).server_id)
    return seen


def test_sighup_from_the_first_moment_until_serving_kills_nothing():
    served = Served("--port", "0", "--metrics-port", "0")
    try:
        wait_for(lambda: sighup_ignored(served.proc.pid), "SIGHUP ignored")
        flood = Flood(served.proc.pid)
        wait_for(lambda: onnxruntime_loaded(served.proc.pid), "onnxruntime in the process")
        before_load = flood.sent
        port = int(served.line(r"serving on 127\.0\.0\.1:(\d+)").group(1))
        sent = flood.stop()
        assert sent > before_load  # some arrived while ORT loaded the model
        assert answers(f"127.0.0.1:{port}")
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(PATIENCE_S) == 0, served.log
        print(f"{sent} SIGHUPs from the first moment until serving ({sent - before_load} with ORT loaded)")
    finally:
        served.close()


def test_sighup_while_it_drains_and_exits_kills_nothing():
    served = Served("--port", "0", "--metrics-port", "0", "--drain-grace-s", "1")
    try:
        port = int(served.line(r"serving on 127\.0\.0\.1:(\d+)").group(1))
        assert answers(f"127.0.0.1:{port}")
        flood = Flood(served.proc.pid)
        wait_for(lambda: flood.sent > 10, "SIGHUPs on their way")
        served.proc.send_signal(signal.SIGTERM)  # the flood goes on through the drain and the exit
        code = served.proc.wait(PATIENCE_S)
        sent = flood.stop()
        assert code == 0, served.log
        print(f"{sent} SIGHUPs around the drain: exit {code}")
    finally:
        served.close()


def ready_workers(served: Served) -> set[int]:
    return {int(m.group(1)) for m in served.matches(r"worker (\d+) ready")}


def test_workers_survive_sighup_from_the_first_moment_to_the_exit():
    port, metrics_port = free_port(), free_port()
    served = Served(
        "--workers",
        "2",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--http-port",
        str(free_port()),
    )
    try:
        supervisor = served.proc.pid
        wait_for(lambda: sighup_ignored(supervisor), "SIGHUP ignored")
        flood = Flood(
            supervisor
        )  # from the supervisor's first moment; forwarded to each worker from its fork
        served.line(r"all 2 workers ready")
        during_start = flood.sent
        assert len(ready_workers(served)) == 2 and children(supervisor) == ready_workers(served)
        assert not served.matches(r"died|failed|error"), served.log
        assert answers(f"127.0.0.1:{port}", connections=10)
        served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(PATIENCE_S)
        total = flood.stop()
        assert code == 0, served.log
        print(f"{during_start} SIGHUPs during start-up, {total} in all, 0 workers lost: exit {code}")
    finally:
        served.close()


def test_a_worker_killed_as_soon_as_it_is_ready_is_replaced_even_under_sighup():
    port, metrics_port = free_port(), free_port()
    served = Served(
        "--workers",
        "2",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--http-port",
        str(free_port()),
    )
    try:
        supervisor = served.proc.pid
        victim = int(served.line(r"worker (\d+) ready").group(1))
        first = children(supervisor)  # both first workers, listed before the supervisor can replace one
        os.kill(victim, signal.SIGKILL)
        flood = Flood(supervisor)
        # The replacement gets SIGHUP straight from the test too, from the moment it exists.
        newcomer = wait_for(lambda: next(iter(children(supervisor) - first), None), "a replacement worker")
        flood.add(newcomer)
        served.until(
            lambda: ready_workers(served) - {victim} == children(supervisor),
            "two workers ready besides the victim",
        )
        assert len(children(supervisor)) == 2 and victim not in children(supervisor)
        assert newcomer in ready_workers(served)
        assert answers(f"127.0.0.1:{port}", connections=10)
        sent = flood.stop()
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(PATIENCE_S) == 0, served.log
        assert len(served.matches(rf"worker {victim} died")) == 1, served.log
        print(f"victim {victim} replaced by {newcomer} under {sent} SIGHUPs")
    finally:
        served.close()


def break_encoder(version: Path) -> None:
    """Swap the encoder for bytes ORT cannot parse and update the card's sha256: the supervisor's
    checks (card, sha256) pass, and a worker fails when ORT loads it."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["mean"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 32])],
    )
    garbage = helper.make_model(graph).SerializeToString()  # a well-formed model ORT cannot load
    (version / "encoder.onnx").write_bytes(garbage)
    card = json.loads((version / "model.json").read_text())
    card["files"]["encoder.onnx"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    if "bytes" in card["files"]["encoder.onnx"]:
        card["files"]["encoder.onnx"]["bytes"] = len(garbage)
    (version / "model.json").write_text(json.dumps(card))


def unloadable_repository(root: Path) -> Path:
    shutil.copytree(REPOSITORY / "fashion-vae" / "1", root / "fashion-vae" / "1")
    break_encoder(root / "fashion-vae" / "1")
    return root


def test_workers_that_cannot_start_end_the_supervisor_in_one_line(tmp_path):
    repository = unloadable_repository(tmp_path)
    cmd = [
        *SERVE,
        "--workers",
        "2",
        "--port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        "--model-repository",
        str(repository),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, done.stderr
    assert re.match(r"vae-serve: error: worker \d+: .*encoder\.onnx", lines[0]), lines[0]


def test_a_replacement_that_cannot_start_is_retried_while_its_sibling_serves(tmp_path):
    version = tmp_path / "fashion-vae" / "1"
    shutil.copytree(REPOSITORY / "fashion-vae" / "1", version)
    port, metrics_port = free_port(), free_port()
    served = Served(
        "--workers",
        "2",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--http-port",
        str(free_port()),
        "--model-repository",
        str(tmp_path),
    )
    try:
        supervisor = served.proc.pid
        served.line(r"all 2 workers ready")
        shutil.copytree(version, tmp_path / "good")
        break_encoder(version)  # from now on a new worker cannot load the model
        victim = min(children(supervisor))
        os.kill(victim, signal.SIGKILL)
        failed = r"worker \d+ failed to start \(exit 1\): .*encoder\.onnx.*; starting another in ([\d.]+) s"
        served.until(lambda: len(served.matches(failed)) >= 2, "two failed replacements")
        delays = [float(m.group(1)) for m in served.matches(failed)]
        assert delays == sorted(delays) and delays[-1] > 0, delays  # backing off
        assert len(answers(f"127.0.0.1:{port}", connections=5)) == 1  # the sibling never stopped
        assert served.proc.poll() is None
        for name in ("encoder.onnx", "model.json"):  # repaired: the next attempt succeeds
            shutil.copy(tmp_path / "good" / name, version / name)
        before = ready_workers(served)
        served.until(lambda: ready_workers(served) - before, "a replacement ready")
        assert len(children(supervisor)) == 2
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(PATIENCE_S) == 0, served.log
        print(f"replacement retried after {delays} s, then served")
    finally:
        served.close()


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare(1) with PID namespaces")
def test_workers_start_when_the_supervisor_is_pid_1():
    """In a container `vae-serve` is PID 1: a worker must not take that for "my supervisor died"."""
    port = free_port()
    args = [
        "--workers",
        "2",
        "--port",
        str(port),
        "--metrics-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
    ]
    served = Served(*args, wrapper=["unshare", "--pid", "--fork"])
    try:
        served.line(r"\[1\] vae_serve\.server\.workers: all 2 workers ready")
        assert len(answers(f"127.0.0.1:{port}", connections=5)) >= 1
        supervisor = wait_for(lambda: next(iter(children(served.proc.pid)), None), "the supervisor")
        os.kill(supervisor, signal.SIGTERM)
        assert served.proc.wait(PATIENCE_S) == 0, served.log
    finally:
        served.close()
