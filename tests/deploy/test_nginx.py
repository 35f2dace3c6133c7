"""The compose topology for real, without containers: two vae-serve replicas, real nginx with
the deployment's own upstream template, and clients going through nginx."""

from __future__ import annotations

import signal
import threading
import urllib.request

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, start_nginx, start_vae_serve, wait_for

from vae_serve.client import VaeClient


def requests_served(metrics_port: int, protocol: str = "grpc") -> float:
    """Requests answered OK by a replica, over gRPC or over HTTP (methods named http.*)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "vae_serve_requests")
    return sum(
        s.value
        for s in family.samples
        if s.name == "vae_serve_requests_total"
        and s.labels["code"] == "OK"
        and s.labels["method"].startswith("http.") == (protocol == "http")
    )


def answers_health(port: int) -> bool:
    try:
        with VaeClient(f"127.0.0.1:{port}", timeout=1, retries=0) as probe:
            probe.health()
        return True
    except Exception:  # the upstreams not reachable through it yet
        return False


@pytest.fixture
def topology(tmp_path):
    replicas, http_ports = [], []
    try:
        for _ in range(2):
            metrics, http_port = free_port(), free_port()
            proc, port = start_vae_serve(
                "--port", str(free_port()), "--metrics-port", str(metrics), "--http-port", str(http_port)
            )
            replicas.append((proc, port, metrics))
            http_ports.append(http_port)
        nginx, port, http_port = start_nginx(tmp_path, [p for _, p, _ in replicas], http_ports)
        try:
            wait_for(lambda: answers_health(port), "nginx answering health checks")
            yield replicas, f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
        finally:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
    finally:  # a failed start must not leave a replica behind
        for proc, _, _ in replicas:
            proc.kill()
            proc.wait()


def test_both_replicas_serve_and_a_killed_one_loses_no_request(topology):
    replicas, target, _ = topology
    before = [requests_served(m) for _, _, m in replicas]
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    with VaeClient(target) as client:
        want, _ = client.encode(x)
        for _ in range(40):
            client.encode(x)
    after = [requests_served(m) for _, _, m in replicas]
    assert all(a - b >= 10 for a, b in zip(after, before, strict=True)), (before, after)  # round robin

    results, failures = [], []

    def steady_load() -> None:
        with VaeClient(target, retries=8, timeout=10) as client:
            for _ in range(300):
                try:
                    results.append(client.encode(x)[0])
                except Exception as exc:  # counted: the assertion below must see zero
                    failures.append(exc)

    load = threading.Thread(target=steady_load)
    load.start()
    wait_for(lambda: len(results) >= 100 or not load.is_alive(), "100 answers before the kill")
    victim, _, _ = replicas[0]
    victim.send_signal(signal.SIGKILL)  # mid-load, no drain
    killed_at = len(results)
    load.join(120)
    assert 100 <= killed_at < 300
    assert not failures, failures[:3]
    assert len(results) == 300
    assert all(np.array_equal(r, want) for r in results)
    survivor_metrics = replicas[1][2]
    assert requests_served(survivor_metrics) > after[1] + 150  # it took over the dead replica's share


def test_http_is_balanced_too_and_a_killed_replica_loses_no_request(topology):
    replicas, _, url = topology
    body = {"z": np.random.default_rng(1).standard_normal((2, 32)).tolist()}
    with httpx.Client(base_url=url, timeout=10) as client:
        want = client.post("/v1/decode", json=body).json()["x"]
        for _ in range(40):
            assert client.post("/v1/decode", json=body).status_code == 200
        served = [requests_served(m, "http") for _, _, m in replicas]
        assert all(n >= 10 for n in served), served  # round robin
        replicas[0][0].send_signal(signal.SIGKILL)  # no drain
        replies = [client.post("/v1/decode", json=body) for _ in range(60)]
    assert [r.status_code for r in replies] == [200] * 60
    assert all(r.json()["x"] == want for r in replies)
