"""`vae-serve` as a real process: start-up failures in one line, and a drain that loses nothing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import PATIENCE_S, REPOSITORY, read_until, start_server_ports, start_vae_serve, wait_for

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.ports import ready_line
from vae_serve.server.settings import Settings
from vae_serve.tensor import to_tensor

SERVE = [sys.executable, "-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1"]


def start(*args: str) -> tuple[subprocess.Popen, str]:
    proc, port = start_vae_serve("--port", "0", "--metrics-port", "0", *args)
    return proc, f"127.0.0.1:{port}"


def fails_in_one_line(args: list[str], expected: str, code: int = 1) -> None:
    """Exit `code`, and stderr holds exactly one line besides INFO logs: ours, naming the problem."""
    cmd = [*SERVE, "--port", "0", "--metrics-port", "0", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vae-serve: error: ")
    assert expected in lines[0]


def test_device_cuda_without_cuda_refuses_to_start():
    from vae_serve.server.models.graph import choose_providers

    if "CUDAExecutionProvider" in choose_providers("auto"):
        pytest.skip("this host really has CUDA")
    fails_in_one_line(["--device", "cuda"], "--device cuda: ")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-samples", "-1"], "--max-samples / VAE_MAX_SAMPLES"),
        (["--max-message-bytes", "3000000000"], "--max-message-bytes / VAE_MAX_MESSAGE_BYTES"),
        (["--tls-key", "/etc/hostname"], "--tls-cert and --tls-key go together"),
    ],
)
def test_bad_flag_value(args, expected):
    fails_in_one_line(args, expected, code=2)


def test_bad_tls_files(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key.write_text("garbage")
    fails_in_one_line(["--tls-cert", str(cert), "--tls-key", str(key)], "not a matching PEM pair", code=2)


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails_in_one_line(["--port", str(port)], f"cannot listen on 127.0.0.1:{port}: Address already in use")


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("--port", "cannot listen on"),
        ("--http-port", "cannot listen for HTTP on"),
        ("--metrics-port", "cannot serve metrics on"),
    ],
)
def test_a_busy_port_is_the_one_line_said_before_anything_loads(flag, says):
    """Nothing else is said: no model was loaded, no library started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [*SERVE, "--port", "0", "--http-port", "0", "--metrics-port", "0", flag, str(port)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    expected = f"vae-serve: error: {says} 127.0.0.1:{port}: Address already in use ({flag})"
    assert done.stderr.splitlines() == [expected]


READY = (
    r"ready: playground http://127\.0\.0\.1:(\d+)/, API docs http://127\.0\.0\.1:(\d+)/docs, "
    r"gRPC 127\.0\.0\.1:(\d+), metrics http://127\.0\.0\.1:(\d+)/metrics$"
)


def test_the_ready_line_names_every_address_and_each_answers():
    ports = ("--port", "0", "--http-port", "0", "--metrics-port", "0")
    proc, (playground, docs, port, metrics) = start_server_ports([*SERVE[1:], *ports], READY)
    try:
        assert playground == docs
        for url, kind in (
            (f"http://127.0.0.1:{playground}/", "text/html"),
            (f"http://127.0.0.1:{docs}/docs", "text/html"),
            (f"http://127.0.0.1:{metrics}/metrics", "text/plain"),
        ):
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert reply.status == 200 and reply.headers["content-type"].startswith(kind), url
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            assert stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10).name == "fashion-vae"
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_ready_line_gives_addresses_a_person_can_open():
    s = Settings(host="0.0.0.0", http_host="::", metrics_host="::1")
    assert ready_line(s, 50051, 8000, 8002) == (
        "ready: playground http://localhost:8000/, API docs http://localhost:8000/docs, "
        "gRPC localhost:50051, metrics http://[::1]:8002/metrics"
    )
    tls = s.model_copy(update={"tls_cert": Path("cert.pem"), "playground": False, "http_host": "10.0.0.2"})
    assert ready_line(tls, 1, 2, 3) == (
        "ready: API docs https://10.0.0.2:2/docs, gRPC localhost:1 (TLS), metrics http://[::1]:3/metrics"
    )
    assert ready_line(s, 1, None, 3) == "ready: gRPC localhost:1, metrics http://[::1]:3/metrics"


def test_debug_logs_are_vae_serves_own_and_not_grpcs_internals(tmp_path):
    """--log-level debug shows the server's own debug lines; grpc's internals stay behind its own
    switches (GRPC_VERBOSITY, GRPC_TRACE), which --log-level neither sets nor needs."""
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    cmd = [*SERVE, "--port", "0", "--http-port", "0", "--metrics-port", "0", "--log-level", "debug"]
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stderr=stderr, env=env)
    try:
        wait_for(lambda: "ready: " in log.read_text(), "the ready line")
        port = re.search(r"gRPC 127\.0\.0\.1:(\d+)", log.read_text()).group(1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            for _ in range(3):
                stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    debug = re.findall(r" DEBUG \[[^]]*\] \[\d+\] (\S+): ", text)
    assert "vae_serve.server.lifecycle" in debug, text
    assert {name.split(".")[0] for name in debug} == {"vae_serve"}, text
    assert "grpc" not in {name.split(".")[0] for name in re.findall(r"\] (\S+): ", text)}, text


def test_missing_model():
    fails_in_one_line(["--model", "absent"], "no versions of model 'absent'")


def test_corrupt_model_names_the_file(tmp_path):
    shutil.copytree(REPOSITORY / "fashion-vae" / "1", tmp_path / "fashion-vae" / "1")
    graph = tmp_path / "fashion-vae" / "1" / "encoder.onnx"
    graph.write_bytes(b"\0" * graph.stat().st_size)  # the size the card records, other bytes
    fails_in_one_line(["--model-repository", str(tmp_path)], "encoder.onnx: sha256")


def decode_calls_received(metrics_port: int) -> float:
    """Decode calls in handlers or answered, from the server's own metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("vae_serve_requests_in_flight", "vae_serve_requests_total")
        and sample.labels.get("method") == "Decode"
    )


def test_sigterm_during_a_burst_fails_no_call():
    from support import free_port

    metrics_port = free_port()
    # A grace far beyond the test's patience: a drain that waited it out, instead of ending once
    # the burst is answered, would not exit in time.
    proc, target = start(
        "--drain-grace-s", "3600", "--metrics-port", str(metrics_port), "--http-port", str(free_port())
    )
    try:
        with grpc.insecure_channel(target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
            z = to_tensor(np.random.default_rng(0).standard_normal((256, 32), dtype=np.float32))
            calls = [stub.Decode.future(vae_pb2.DecodeRequest(z=z), timeout=30) for _ in range(15)]
            wait_for(lambda: decode_calls_received(metrics_port) == 15, "the whole burst received")
            proc.send_signal(signal.SIGTERM)
            results = [call.result() for call in calls]
            assert all(r.x.shape == [256, 784] for r in results)
        assert proc.wait(timeout=PATIENCE_S) == 0
    finally:
        proc.kill()
        proc.wait()


def test_workers_share_the_port_and_all_answer(tmp_path):
    from support import free_port

    port, metrics_port = free_port(), free_port()
    proc, target = start(
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
        read_until(proc, r"all 2 workers ready")  # the first one's start-up line came before
        answered: dict[str, int] = {}
        for _ in range(40):  # a new connection each time: the kernel spreads them over the workers
            with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                info = vae_pb2_grpc.VAEServiceStub(channel).GetModelInfo(
                    vae_pb2.GetModelInfoRequest(), timeout=10
                )
                answered[info.server_id] = answered.get(info.server_id, 0) + 1
            if len(answered) == 2:
                break
        assert len(answered) == 2, answered
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = [s for s in families["vae_serve_requests"].samples if s.name.endswith("_total")]
        total = sum(s.value for s in samples if s.labels["method"] == "GetModelInfo")
        assert total == sum(answered.values())  # both workers' counters, merged on one port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=PATIENCE_S) == 0
    finally:
        proc.kill()
        proc.wait()


def worker_pids(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children}


def test_a_dead_worker_is_replaced_and_a_dead_supervisor_takes_its_workers_along():
    from support import free_port

    port, metrics_port = free_port(), free_port()
    proc, target = start(
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
        read_until(proc, r"all 2 workers ready")  # a death from now on is replaced, not a bad start
        read_until(proc, rf"ready: .*, gRPC 127\.0\.0\.1:{port}, metrics http://127\.0\.0\.1:{metrics_port}/")
        first = worker_pids(proc.pid)
        assert len(first) == 2
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: victim not in worker_pids(proc.pid) and len(worker_pids(proc.pid)) == 2, "replacement"
        )
        replaced = worker_pids(proc.pid)
        assert victim not in replaced and len(replaced) == 2
        with grpc.insecure_channel(target) as channel:
            assert (
                vae_pb2_grpc.VAEServiceStub(channel)
                .GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=20)
                .name
            )
        proc.send_signal(signal.SIGKILL)  # the supervisor dies without a word to its workers
        proc.wait(10)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in replaced), "end of the orphans")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_sigterm_under_steady_load_fails_no_admitted_call():
    proc, target = start("--drain-grace-s", "3")
    z = to_tensor(np.zeros((1, 32), np.float32))
    outcomes: dict[str, int] = {}
    lock, stop = threading.Lock(), threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.Decode(vae_pb2.DecodeRequest(z=z), timeout=10)
                    key = "OK"
                except grpc.RpcError as err:
                    key = err.code().name
                    time.sleep(0.01)
                with lock:
                    outcomes[key] = outcomes.get(key, 0) + 1

    callers = [threading.Thread(target=caller) for _ in range(4)]
    try:
        for t in callers:
            t.start()
        wait_for(lambda: outcomes.get("OK", 0) >= 200, "steady load")
        proc.send_signal(signal.SIGTERM)
        # Callers that ignore health are refused until the grace period ends, then it stops: it
        # exits while they go on calling.
        assert proc.wait(timeout=PATIENCE_S) == 0
        assert all(t.is_alive() for t in callers)
    finally:
        stop.set()
        for t in callers:
            t.join(20)
        proc.kill()
        proc.wait()
    # Calls either completed or were refused before any work (UNAVAILABLE: retry elsewhere). A call
    # that reaches the port in the very instant the listener closes is cancelled by gRPC unstarted:
    # at most the one each caller had on the wire then.
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, outcomes
    assert outcomes.get("CANCELLED", 0) <= len(callers), outcomes
    assert outcomes["OK"] > 100
