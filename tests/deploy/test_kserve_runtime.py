"""The KServe runtime (deploy/kserve/): the ClusterServingRuntime and the InferenceService examples
held to KServe's CRD schemas and to KServe's conventions, and vae-serve started exactly as that
runtime starts it (its arguments and environment over the image's, the model repository where the
storage initializer puts it) answering the KServe SDK over v2 REST and v2 gRPC."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from support import DEFAULT_MODEL_DIR, REPO_ROOT, REPOSITORY, start_vae_serve_http

KSERVE = REPO_ROOT / "deploy" / "kserve"
CALLS = Path(__file__).with_name("kserve_runtime_calls.py")
PORTS = {"--http-port": "8080", "--port": "9000", "--metrics-port": "8002"}  # KServe's, Triton's metrics


def load(name: str) -> dict:
    return yaml.safe_load((KSERVE / name).read_text())


def runtime_container() -> dict:
    (server,) = load("clusterservingruntime.yaml")["spec"]["containers"]
    return server


def flags(args: list[str]) -> dict[str, str]:
    """--name=value arguments as a dict (the runtime writes every flag that way)."""
    assert all(re.fullmatch(r"--[a-z-]+(=.+)?", a) for a in args), args
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in args)


def image_environment() -> dict[str, str]:
    """The Dockerfile's ENV: what the runtime's container starts with before its own env."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            found |= dict(re.findall(r"(\w+)=(\S+)", line))
    return found


@pytest.mark.parametrize("kind", ["ClusterServingRuntime", "ServingRuntime"])
def test_the_runtime_matches_kserves_schema(kind, crd_errors):
    runtime = load("clusterservingruntime.yaml") | {"kind": kind}
    assert not crd_errors(runtime)


@pytest.mark.parametrize("name", ["inferenceservice.yaml", "inferenceservice-grpc.yaml"])
def test_the_inference_services_match_kserves_schema_and_the_runtime(name, crd_errors):
    service, runtime = load(name), load("clusterservingruntime.yaml")["spec"]
    assert not crd_errors(service)
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == load("clusterservingruntime.yaml")["metadata"]["name"]
    formats = [{"name": f["name"], "version": f["version"]} for f in runtime["supportedModelFormats"]]
    assert model["modelFormat"] in formats
    assert model["protocolVersion"] in runtime["protocolVersions"]
    assert model["storageUri"].startswith("s3://")
    if model["protocolVersion"] == "grpc-v2":  # Knative routes the named h2c port: the gRPC one
        assert model["ports"] == [{"name": "h2c", "containerPort": int(PORTS["--port"]), "protocol": "TCP"}]


def test_a_wrong_runtime_field_is_caught(crd_errors):
    runtime = load("clusterservingruntime.yaml")
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")
    assert crd_errors(runtime)


def test_the_runtime_follows_kserves_conventions():
    runtime = load("clusterservingruntime.yaml")["spec"]
    server = runtime_container()
    assert server["name"] == "kserve-container"
    args = flags(server["args"])
    assert {flag: args[flag] for flag in PORTS} == PORTS
    assert args["--model-repository"] == "/mnt/models"  # where the storage initializer copies storageUri
    assert args["--model"] == "{{.Name}}"  # the InferenceService's name picks the model
    assert runtime["annotations"]["prometheus.kserve.io/port"] == args["--metrics-port"]
    assert set(runtime["protocolVersions"]) == {"v2", "grpc-v2"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["port"] == int(args["--http-port"])
    assert server["securityContext"]["runAsNonRoot"] and server["securityContext"]["readOnlyRootFilesystem"]


@pytest.fixture
def served_as_kserve_does(tmp_path, monkeypatch):
    """vae-serve with the runtime's arguments and environment over the image's, the repository
    at a /mnt/models-like path, {{.Name}} filled in from the InferenceService example; only the
    ports are free loopback ones (KServe's are taken on a shared machine)."""
    mnt = tmp_path / "mnt" / "models"
    shutil.copytree(REPOSITORY, mnt, ignore=shutil.ignore_patterns("__pycache__"))
    name = load("inferenceservice.yaml")["metadata"]["name"]
    server = runtime_container()
    args = []
    for arg in server["args"]:
        flag = arg.split("=", 1)[0]
        arg = f"{flag}=0" if flag in PORTS else arg
        args.append(arg.replace("/mnt/models", str(mnt)).replace("{{.Name}}", name))
    environment = image_environment() | {e["name"]: e["value"] for e in server["env"]}
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    proc, grpc_port, http_port = start_vae_serve_http(*args)
    try:
        yield proc, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_started_as_the_runtime_it_answers_the_kserve_sdk(served_as_kserve_does):
    proc, url, target = served_as_kserve_does
    z = np.random.default_rng(3).standard_normal((3, 32), dtype=np.float32)
    cmd = [sys.executable, str(CALLS), url, target, json.dumps(z.tolist())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["health"] == {"rest": [True] * 4, "grpc": [True] * 4}
    decoder = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "decoder.onnx"))
    want = decoder.run(None, {"z": z})[0]
    for protocol in ("rest", "grpc"):
        assert got[protocol]["id"] == f"{protocol}-1"
        np.testing.assert_allclose(np.array(got[protocol]["x"], np.float32), want, atol=1e-6)
    assert proc.poll() is None
