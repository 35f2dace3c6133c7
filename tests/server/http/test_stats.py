"""`GET /v1/stats`: rates and quantiles from the server's own histograms, merged across workers."""

from __future__ import annotations

import math

import httpx
import pytest
from support import free_port, read_until, start_vae_serve_http

from vae_serve.server.http.stats import quantile

Z = {"z": [[0.0] * 32]}


def test_quantiles_read_buckets_as_prometheus_does():
    buckets = {0.001: 0.0, 0.01: 10.0, 0.1: 20.0, math.inf: 20.0}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.25, buckets) == pytest.approx(0.0055)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * 0.98)
    assert quantile(0.99, {0.001: 0.0, math.inf: 5.0}) == 0.001  # beyond the last bound: that bound
    assert quantile(0.5, {0.001: 0.0, math.inf: 0.0}) is None


def test_stats_count_what_was_served(http):
    for _ in range(20):
        assert http.post("/v1/decode", json=Z).status_code == 200
    report = http.get("/v1/stats").json()
    decode = report["methods"]["http.Decode"]
    assert decode["requests"] >= 20 and decode["errors"] == 0
    assert 0 < decode["p50_ms"] <= decode["p99_ms"] < 10_000


@pytest.mark.slow
def test_stats_are_merged_across_workers():
    port = free_port()
    args = ["--workers", "2", "--port", str(free_port()), "--metrics-port", str(free_port())]
    proc, _, _ = start_vae_serve_http(*args, "--http-port", str(port))  # a worker's start-up line
    try:
        read_until(proc, r"all 2 workers ready")  # both listen now
        url = f"http://127.0.0.1:{port}"
        answered_by = set()
        for _ in range(40):  # a connection each: the kernel spreads them over both workers
            with httpx.Client(base_url=url, timeout=10) as client:
                reply = client.post("/v1/decode", json=Z)
                assert reply.status_code == 200
                answered_by.add(client.get("/v1/model").json()["server_id"])
        assert len(answered_by) == 2
        with httpx.Client(base_url=url, timeout=10) as client:  # the first report: since start
            assert client.get("/v1/stats").json()["methods"]["http.Decode"]["requests"] == 40
    finally:
        proc.terminate()
        proc.wait(30)
