"""Triton's extensions over HTTP (model configuration, statistics, repository index), with the real
tritonclient.http in its own process and with plain httpx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import DEFAULT_VERSION

from vae_serve.server.protocol.oip_extensions import OLDER
from vae_serve.server.settings import Settings

CALLS = Path(__file__).with_name("tritonclient_http_calls.py")
W, L = 784, 32
# The default model's graphs under the names clients knew first, then under its own.
OIP_NAMES = ("vae_encoder", "vae_decoder", "fashion-vae_encoder", "fashion-vae_decoder")


def triton(http_server, scenario: str, **kwargs) -> dict:
    cmd = [sys.executable, str(CALLS), http_server.address, scenario, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_model_config_is_triton_json_with_the_settings_served(http_server):
    s = Settings()  # the fixture's server runs on the defaults
    got = triton(http_server, "extensions", version=DEFAULT_VERSION)
    assert got["pinned"] == "vae_decoder"

    def tensor(name: str, width: int) -> dict:
        return {"name": name, "data_type": "TYPE_FP32", "dims": [width]}

    assert got["config"]["vae_decoder"] == {
        "name": "vae_decoder",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": s.keep_versions}},
        "max_batch_size": s.max_request_rows,
        "input": [{**tensor("z", L), "format": "FORMAT_NONE"}],
        "output": [tensor("x", W)],
        "instance_group": [{"name": "vae_decoder_0", "kind": "KIND_CPU", "count": 1}],
        "dynamic_batching": {
            "preferred_batch_size": [s.max_batch_size],
            "max_queue_delay_microseconds": s.max_queue_delay_us,
        },
    }
    encoder = got["config"]["vae_encoder"]
    assert encoder["input"] == [{**tensor("x", W), "format": "FORMAT_NONE"}]
    assert encoder["output"] == [tensor("mean", L), tensor("logvar", L)]


def test_repository_index_and_model_control(http_server, http):
    got = triton(http_server, "extensions", version=DEFAULT_VERSION)
    assert got["index"] == [  # version 1, on disk beside the version served, is listed as not served
        *({"name": m, "version": "1", "state": "UNAVAILABLE", "reason": OLDER} for m in OIP_NAMES),
        *({"name": m, "version": DEFAULT_VERSION, "state": "READY", "reason": ""} for m in OIP_NAMES),
    ]
    assert got["errors"]["config_unknown_model"].startswith("404 no model 'vae_other'")
    assert got["errors"]["stats_unknown_version"].startswith("404 model version '9' is not loaded")
    for action in ("load", "unload"):
        assert got["errors"][action].startswith("501 explicit model load / unload is not allowed")
    ready = [entry for entry in got["index"] if entry["state"] == "READY"]
    assert http.post("/v2/repository/index", json={"ready": True}).json() == ready
    for body in (b"[", b'{"ready": "yes"}', b"[true]"):
        refused = http.post("/v2/repository/index", content=body)
        assert refused.status_code == 400 and "body:" in refused.json()["error"]
    assert http.post("/v2/repository/index", content=b" " * 2048).status_code == 413


@pytest.mark.parametrize(("model", "name", "width"), [("vae_encoder", "x", W), ("vae_decoder", "z", L)])
def test_statistics_move_by_exactly_what_was_sent(http_server, model, name, width):
    n, rows = 5, 4
    got = triton(http_server, "statistics", model=model, name=name, width=width, rows=rows, n=n)
    (before,), (after,) = got["before"]["model_stats"], got["after"]["model_stats"]
    assert (after["name"], after["version"]) == (model, DEFAULT_VERSION)
    assert [(s["name"], s["version"]) for s in got["all"]["model_stats"]] == [
        (m, DEFAULT_VERSION) for m in OIP_NAMES
    ]

    def moved(*path: str) -> int:
        old, new = before, after
        for key in path:
            old, new = old[key], new[key]
        assert isinstance(new, int)  # Triton's JSON: integers, not strings
        return new - old

    assert moved("inference_count") == n * rows
    assert moved("execution_count") == n
    stats = ("inference_stats",)
    assert moved(*stats, "success", "count") == n and moved(*stats, "fail", "count") == 0
    assert moved(*stats, "queue", "count") == moved(*stats, "compute_infer", "count") == n
    infer_ns, success_ns = moved(*stats, "compute_infer", "ns"), moved(*stats, "success", "ns")
    assert infer_ns > 0
    assert moved(*stats, "queue", "ns") + infer_ns <= success_ns
    assert after["last_inference"] > before["last_inference"]


def test_statistics_routes_are_read_only_and_404_for_unknown_models(http):
    assert http.get("/v2/models/stats").status_code == 200
    assert http.get("/v2/models/nope/stats").status_code == 404
    assert http.get("/v2/models/nope/config").status_code == 404
    assert http.post("/v2/models/stats").status_code == 405


def test_the_openapi_document_lists_the_extension_routes(http):
    paths = set(http.get("/openapi.json").json()["paths"])
    wanted = {"/v2/models/{model_name}/config", "/v2/models/{model_name}/versions/{model_version}/stats"}
    wanted |= {"/v2/models/stats", "/v2/repository/index", "/v2/repository/models/{model_name}/load"}
    assert wanted <= paths, wanted - paths
