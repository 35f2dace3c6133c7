"""KServe v2 with the KServe SDK as the client: its REST and gRPC clients (in their own process,
kserve_calls.py), and every reply held to the SDK's models of the protocol
(`kserve.protocol.rest.v2_datamodels`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import DEFAULT_VERSION

CALLS = Path(__file__).with_name("kserve_calls.py")
L = 32
GRPC_EXTENSIONS = ["model_configuration", "model_repository", "statistics"]
REST_EXTENSIONS = ["binary_tensor_data", *GRPC_EXTENSIONS]


def kserve(http_server, scenario: str, **kwargs) -> dict:
    cmd = [sys.executable, str(CALLS), http_server.url, http_server.grpc_target, scenario, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def z() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((2, L), dtype=np.float32)


@pytest.fixture(scope="module")
def rest(http_server, z) -> dict:
    return kserve(http_server, "rest", z=z.tolist(), version=DEFAULT_VERSION)


def test_the_rest_client_checks_health_and_infers(rest, z, direct):
    assert rest["health"] == {"live": True, "ready": True, "vae_encoder": True, "vae_decoder": True}
    want = direct[1].run(None, {"z": z})[0]
    for mode in ("binary", "json"):
        got = rest["inferred"][mode]
        assert (got["id"], got["model_name"]) == ("kserve-7", "vae_decoder"), mode
        np.testing.assert_allclose(np.array(got["x"], np.float32), want, atol=1e-6)
    assert rest["refused"].startswith("no model 'vae_other'") and "404 Not Found" in rest["refused"]


def test_rest_replies_are_the_sdks_messages(rest):
    bodies = rest["bodies"]
    for name, body in bodies.items():
        assert "invalid" not in body and "extra" not in body, (name, body)
    assert bodies["live"] == {"live": True} and bodies["ready"] == {"ready": True}
    assert bodies["vae_encoder ready"] == {"name": "vae_encoder", "ready": True}
    assert bodies["pinned ready"] == {"name": "vae_decoder", "ready": True}
    assert bodies["metadata"]["extensions"] == REST_EXTENSIONS
    assert bodies["infer"]["id"] == "a1" and bodies["infer"]["model_version"] == DEFAULT_VERSION


def test_rest_errors_are_the_protocols_error_object(rest):
    statuses = {name: error["status"] for name, error in rest["errors"].items()}
    assert statuses == {
        "unknown model ready": 404,
        "unknown model metadata": 404,
        "unknown version metadata": 404,
        "unknown model infer": 404,
        "bad infer": 400,
    }
    for name, error in rest["errors"].items():
        assert error["is_error_object"] and error["error"], name


def test_the_grpc_client_checks_health_and_infers(http_server, z, direct):
    got = kserve(http_server, "grpc", z=z.tolist())
    assert got["health"] == {"live": True, "ready": True, "vae_encoder": True, "vae_decoder": True}
    assert (got["inferred"]["id"], got["inferred"]["model_name"]) == ("kserve-8", "vae_decoder")
    want = direct[1].run(None, {"z": z})[0]
    np.testing.assert_allclose(np.array(got["inferred"]["x"], np.float32), want, atol=1e-6)
    assert got["unknown_model"] == "NOT_FOUND"
    assert got["server"]["extensions"] == GRPC_EXTENSIONS


# What serving each extension means here: its routes (over gRPC, its RPCs: test_oip_extensions.py).
SERVED_BY = {
    "binary_tensor_data": ("post", "/v2/models/{model_name}/infer"),
    "model_configuration": ("get", "/v2/models/{model_name}/config"),
    "model_repository": ("post", "/v2/repository/index"),
    "statistics": ("get", "/v2/models/{model_name}/stats"),
}


def test_server_metadata_lists_every_extension_served(http):
    listed = http.get("/v2").json()["extensions"]
    assert sorted(listed) == sorted(SERVED_BY)
    paths = http.get("/openapi.json").json()["paths"]
    for extension, (method, path) in SERVED_BY.items():
        assert method in paths.get(path, {}), extension
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert "application/octet-stream" in infer["responses"]["200"]["content"]
    refused = http.post("/v2/repository/models/vae_encoder/load")
    assert refused.status_code == 501 and refused.json()["error"].startswith("explicit model load")
