"""Triton's extensions on a data plane in this process: the index's states and reasons, the
statistics of failed and batched requests, and the configuration with batching off."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from support import DEFAULT_MODEL_DIR, DEFAULT_VERSION

from vae_serve.errors import Overloaded, Unsupported
from vae_serve.server.models.model import load_model
from vae_serve.server.models.repository import resolve
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.protocol.oip_extensions import NEWER, OLDER, TritonExtensions, model_control_refused
from vae_serve.server.settings import Settings
from vae_serve.server.telemetry.metrics import Metrics

L = 32


@pytest.fixture(scope="module")
def model():
    return load_model(resolve(DEFAULT_MODEL_DIR.parent.parent, "fashion-vae"), "cpu", 1)


def extensions_for(model, **settings: object) -> TritonExtensions:
    s = Settings(**settings)
    plane = DataPlane(s.batching, s.limits, s.repository, Metrics())
    plane.serve(model)
    return TritonExtensions(plane)


def test_index_says_why_a_version_on_disk_is_not_served(model, tmp_path):
    # only DEFAULT_VERSION is served (the model loaded above): 0 is older, 4 newer
    for version in ("0", DEFAULT_VERSION, "4"):
        (tmp_path / "fashion-vae" / version).mkdir(parents=True)
    (tmp_path / "fashion-vae" / "notes").mkdir()  # not a version: not listed
    ext = extensions_for(model, model_repository=tmp_path)
    try:
        entries = asyncio.run(ext.index())
        names = ("vae_encoder", "vae_decoder", "fashion-vae_encoder", "fashion-vae_decoder")
        assert [(e["name"], e["version"], e["state"], e["reason"]) for e in entries] == [
            *((name, "0", "UNAVAILABLE", OLDER) for name in names),
            *((name, DEFAULT_VERSION, "READY", "") for name in names),
            *((name, "4", "UNAVAILABLE", NEWER) for name in names),
        ]
        assert [e["version"] for e in asyncio.run(ext.index(ready_only=True))] == [DEFAULT_VERSION] * 4
    finally:
        ext.dataplane.close()


def test_index_of_an_unreadable_repository_still_lists_what_is_served(model, tmp_path):
    (tmp_path / "fashion-vae").write_text("a file where the model directory belongs")
    ext = extensions_for(model, model_repository=tmp_path)
    try:
        assert [e["state"] for e in asyncio.run(ext.index())] == ["READY"] * 4
    finally:
        ext.dataplane.close()


def test_batched_requests_count_each_request_once_and_each_run_once(model):
    """Concurrent requests merged into fewer runs: execution_count counts runs, every request is a
    success, and compute_infer counts each run's time once per request it served."""
    ext = extensions_for(model, max_batch_size=64, max_queue_delay_us=200_000, queue_delay_policy="fixed")
    z = np.zeros((2, L), np.float32)

    async def burst() -> list[dict]:
        await asyncio.gather(*(ext.dataplane.decode(z) for _ in range(8)))
        return await ext.statistics("vae_decoder")

    try:
        (stats,) = asyncio.run(burst())
        registry = ext.dataplane.metrics.registry
        run_s = registry.get_sample_value(
            "vae_serve_inference_duration_seconds_sum",
            {"model": "fashion-vae", "graph": "decoder", "version": DEFAULT_VERSION},
        )
        infer = stats["inference_stats"]
        assert stats["inference_count"] == 16 and infer["success"]["count"] == 8
        assert 1 <= stats["execution_count"] < 8  # the fixed delay merged them
        assert infer["compute_infer"]["ns"] > round(run_s * 1e9)  # each run counted per request
        assert infer["queue"]["ns"] + infer["compute_infer"]["ns"] <= infer["success"]["ns"]
        assert stats["batch_stats"] == []
    finally:
        ext.dataplane.close()


def test_a_shed_request_is_a_failure_and_never_ran(model):
    """Unbatched, a 100-row request computes on the worker thread while a second one arrives: the
    queue (150 rows) has no room for it, so it is shed at once."""
    limits = {"max_request_rows": 100, "max_queue_rows": 150, "max_samples": 100}
    ext = extensions_for(model, max_batch_size=1, **limits)
    z = np.zeros((100, L), np.float32)

    async def two() -> list[object]:
        return await asyncio.gather(*(ext.dataplane.decode(z) for _ in range(2)), return_exceptions=True)

    try:
        results = asyncio.run(two())
        assert isinstance(results[1], Overloaded) and not isinstance(results[0], Exception)
        (stats,) = asyncio.run(ext.statistics("vae_decoder"))
        infer = stats["inference_stats"]
        assert (infer["success"]["count"], infer["fail"]["count"], stats["execution_count"]) == (1, 1, 1)
        assert stats["inference_count"] == 100 and infer["fail"]["ns"] > 0
    finally:
        ext.dataplane.close()


def test_config_without_batching_has_no_dynamic_batching(model):
    ext = extensions_for(model, max_batch_size=1, max_request_rows=100, max_queue_rows=100, max_samples=100)
    try:
        config = ext.config("vae_encoder")
        assert "dynamic_batching" not in config and config["max_batch_size"] == 100
        assert config["input"][0]["dims"] == [784]
    finally:
        ext.dataplane.close()


def test_model_control_is_unsupported():
    refused = model_control_refused()
    assert isinstance(refused, Unsupported) and "SIGHUP" in str(refused)


def test_a_flood_of_statistics_and_index_requests_reads_one_at_a_time(model, monkeypatch):
    """Each read runs on the worker threads that large bodies and pictures share: a flood of
    requests must queue on the event loop, not take every thread."""
    from vae_serve.server.protocol import oip_extensions

    reading, most = 0, 0

    def counted(real):
        def read(*args):
            nonlocal reading, most
            reading += 1
            most = max(most, reading)
            try:
                return real(*args)
            finally:
                reading -= 1

        return read

    monkeypatch.setattr(oip_extensions, "graph_statistics", counted(oip_extensions.graph_statistics))
    monkeypatch.setattr(oip_extensions, "list_versions", counted(oip_extensions.list_versions))
    ext = extensions_for(model)
    try:

        async def flood() -> None:
            await asyncio.gather(*(ext.statistics() for _ in range(20)), *(ext.index() for _ in range(20)))

        asyncio.run(flood())
        assert most == 1
    finally:
        ext.dataplane.close()
