"""Two models of different shapes served at once: every front end reaches each by name, and the
default without one (native gRPC and its clients, OIP over gRPC with tritonclient, `/v1` and KServe
v2 REST with httpx and tritonclient.http); hostile names are NOT_FOUND / 404 in one line and never
a label; each model's metrics and statistics are its own; a new version of one model loads while
the other is untouched; workers check every model before they start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import numpy as np
import pytest
from support import RunningServer, free_port, wait_for
from two_models import GREY, RGB, SHAPES, decoded_ones, two_models, write_model

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.client import AsyncVaeClient, VaeClient, VaeServeError
from vae_serve.tensor import from_tensor, to_tensor

HERE = Path(__file__).parent
TRITON_GRPC = HERE / "tritonclient_calls.py"
TRITON_HTTP = HERE / "http" / "tritonclient_http_calls.py"
HOSTILE = ["a/b", "..", "../grey", "grey\x00", "grëy", "x" * 10_000]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """grey is the default; both at version 1."""
    root = two_models(tmp_path_factory.mktemp("models"))
    server = RunningServer(model_repository=root, default_model=GREY, repository_poll_s=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stub(served: RunningServer) -> Iterator[vae_pb2_grpc.VAEServiceStub]:
    with grpc.insecure_channel(served.target) as channel:
        yield vae_pb2_grpc.VAEServiceStub(channel)


@pytest.fixture(scope="module")
def http(served: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{served.server.http_port}", timeout=30) as client:
        yield client


def ones(model: str, rows: int = 2) -> np.ndarray:
    return np.ones((rows, SHAPES[model][1]), np.float32)


def test_native_requests_reach_each_model_by_name_and_the_default_without_one(stub):
    for model, name in ((GREY, ""), (GREY, GREY), (RGB, RGB)):
        width, latent, shape = SHAPES[model]
        info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=name), timeout=10)
        assert (info.name, info.input_dim, info.latent_dim, tuple(info.image_shape)) == (
            model,
            width,
            latent,
            shape,
        )
        assert list(info.loaded_versions) == ["1"]
        decoded = stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(ones(model)), model=name), timeout=10)
        np.testing.assert_allclose(from_tensor(decoded.x, "x"), decoded_ones(model), rtol=1e-6)
        x = to_tensor(np.full((3, width), 0.5, np.float32))
        encoded = stub.Encode(vae_pb2.EncodeRequest(x=x, model=name, model_version="1"), timeout=10)
        assert from_tensor(encoded.mean, "mean").shape == (3, latent)
        sampled = stub.Sample(vae_pb2.SampleRequest(num_samples=4, decode=True, model=name), timeout=10)
        assert from_tensor(sampled.x, "x").shape == (4, width)
    with pytest.raises(grpc.RpcError) as caught:  # rgb's latents to the default model: its width
        stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(ones(RGB))), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_clients_name_the_model(served, tmp_path):
    with VaeClient(served.target, model=RGB) as rgb, VaeClient(served.target) as default:
        assert (rgb.model_info().name, default.model_info().name) == (RGB, GREY)
        np.testing.assert_allclose(rgb.decode(ones(RGB)), decoded_ones(RGB), rtol=1e-6)
        assert rgb.sample(5, seed=1, decode=True)[1].shape == (5, SHAPES[RGB][0])
    with VaeClient(served.target, model="blue") as blue, pytest.raises(VaeServeError) as caught:
        blue.model_info()
    assert caught.value.code is grpc.StatusCode.NOT_FOUND

    async def asynchronously() -> np.ndarray:
        async with AsyncVaeClient(served.target, model=RGB) as client:
            return await client.decode(ones(RGB))

    np.testing.assert_allclose(asyncio.run(asynchronously()), decoded_ones(RGB), rtol=1e-6)
    cli = [sys.executable, "-m", "vae_serve.client.cli", "--target", served.target, "--model", RGB, "info"]
    shown = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "model:     rgb version 1" in shown.stdout and "images 2x2x3" in shown.stdout


def triton(script: Path, address: str, scenario: str, **kwargs: object) -> dict:
    """tritonclient in a process of its own (it registers the same protobuf names as the server)."""
    cmd = [sys.executable, str(script), address, scenario, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_oip_over_grpc_names_each_graph_of_each_model(served):
    for oip_name, model in (("rgb_decoder", RGB), ("grey_decoder", GREY), ("vae_decoder", GREY)):
        got = triton(TRITON_GRPC, served.target, "infer", model=oip_name, name="z", rows=ones(model).tolist())
        assert "error" not in got, got
        np.testing.assert_allclose(got["outputs"]["x"], decoded_ones(model), rtol=1e-6)
    got = triton(TRITON_GRPC, served.target, "infer", model="rgb_encoder", name="x", rows=[[0.5] * 12])
    assert set(got["outputs"]) == {"mean", "logvar"} and len(got["outputs"]["mean"][0]) == 3
    index = triton(TRITON_GRPC, served.target, "extensions", version="1")["index"]
    assert [entry["name"] for entry in index] == [
        "vae_encoder",
        "vae_decoder",
        "grey_encoder",
        "grey_decoder",
        "rgb_encoder",
        "rgb_decoder",
    ]
    assert {entry["state"] for entry in index} == {"READY"}


def test_oip_configuration_and_statistics_are_each_models_own(served):
    with grpc.insecure_channel(served.target) as channel:
        service = oip_grpc.GRPCInferenceServiceStub(channel)
        config = service.ModelConfig(oip.ModelConfigRequest(name="rgb_encoder"), timeout=10).config
        assert (config.name, list(config.input[0].dims), list(config.output[0].dims)) == (
            "rgb_encoder",
            [12],
            [3],
        )

        def runs(name: str) -> int:
            stats = service.ModelStatistics(oip.ModelStatisticsRequest(name=name), timeout=10)
            (only,) = stats.model_stats
            return only.execution_count

        before = {name: runs(name) for name in ("rgb_decoder", "grey_decoder", "vae_decoder")}
        request = oip.ModelInferRequest(model_name="rgb_decoder", raw_input_contents=[ones(RGB, 1).tobytes()])
        request.inputs.add(name="z", datatype="FP32", shape=[1, 3])
        service.ModelInfer(request, timeout=10)
        after = {name: runs(name) for name in before}
        assert after == {"rgb_decoder": before["rgb_decoder"] + 1, "grey_decoder": before["grey_decoder"]} | {
            "vae_decoder": before["vae_decoder"]  # the default's aliases count the default's runs
        }
        every = service.ModelStatistics(oip.ModelStatisticsRequest(), timeout=10).model_stats
        assert [s.name for s in every] == [
            "vae_encoder",
            "vae_decoder",
            "grey_encoder",
            "grey_decoder",
            "rgb_encoder",
            "rgb_decoder",
        ]


def test_rest_routes_take_the_model_in_the_path_and_the_default_without(http, served):
    listed = http.get("/v1/models").json()
    assert listed["default"] == GREY
    assert [(m["name"], m["image_shape"], m["default"]) for m in listed["models"]] == [
        (GREY, [2, 3], True),
        (RGB, [2, 2, 3], False),
    ]
    for prefix, model in (("/v1", GREY), ("/v1/models/grey", GREY), ("/v1/models/rgb", RGB)):
        info = http.get(prefix if prefix != "/v1" else "/v1/model").json()
        assert (info["name"], info["latent_dim"]) == (model, SHAPES[model][1])
        decoded = http.post(f"{prefix}/decode", json={"z": ones(model).tolist(), "model_version": "1"})
        np.testing.assert_allclose(decoded.json()["x"], decoded_ones(model), rtol=1e-6)
        sampled = http.get(f"{prefix}/sample", params={"n": 3, "seed": 7}).json()
        assert np.array(sampled["x"]).shape == (3, SHAPES[model][0])
        x = [[0.5] * SHAPES[model][0]]
        assert len(http.post(f"{prefix}/reconstruct", json={"x": x}).json()["x"][0]) == SHAPES[model][0]
    png = http.post("/v1/models/rgb/decode", json={"z": ones(RGB).tolist()}, headers={"accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    address = f"127.0.0.1:{served.server.http_port}"
    got = triton(
        TRITON_HTTP, address, "infer", model="rgb_decoder", name="z", rows=ones(RGB).tolist(), binary_in=True
    )
    np.testing.assert_allclose(got["outputs"]["x"], decoded_ones(RGB), rtol=1e-6)
    got = triton(
        TRITON_HTTP,
        address,
        "infer",
        model="vae_decoder",
        name="z",
        rows=ones(GREY).tolist(),
        binary_in=False,
    )
    np.testing.assert_allclose(got["outputs"]["x"], decoded_ones(GREY), rtol=1e-6)


@pytest.mark.parametrize("name", HOSTILE, ids=["slash", "dotdot", "traversal", "nul", "non-ascii", "10k"])
def test_a_hostile_model_name_is_not_found_in_one_line_everywhere(served, stub, http, name):
    z = to_tensor(ones(GREY))
    messages = []
    with pytest.raises(grpc.RpcError) as caught:
        stub.Decode(vae_pb2.DecodeRequest(z=z, model=name), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    messages.append(caught.value.details())
    with grpc.insecure_channel(served.target) as channel:
        request = oip.ModelInferRequest(
            model_name=f"{name}_decoder", raw_input_contents=[ones(GREY).tobytes()]
        )
        request.inputs.add(name="z", datatype="FP32", shape=[2, 2])
        with pytest.raises(grpc.RpcError) as caught:
            oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    messages.append(caught.value.details())
    escaped = quote(name, safe="").replace(".", "%2E")  # dots too: a client would drop a `..` segment
    for path in (f"/v1/models/{escaped}/decode", f"/v2/models/{escaped}/infer"):
        reply = http.post(path, json={"z": ones(GREY).tolist()})
        assert reply.status_code == 404, (path, reply.text)
        messages.append(reply.json()["error"])
    for message in messages:
        assert "\n" not in message and len(message) < 300, message
    assert http.get("/v1/models").status_code == 200  # and the server goes on


def test_request_metrics_carry_the_model_resolved_and_never_a_name_sent(served, stub, http):
    stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(ones(RGB)), model=RGB), timeout=10)
    http.post("/v1/decode", json={"z": ones(GREY).tolist()})
    with pytest.raises(grpc.RpcError):
        stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(ones(RGB)), model="../etc/passwd"), timeout=10)
    registry = served.server.metrics.registry

    def value(metric: str, **labels: str) -> float:
        return registry.get_sample_value(metric, labels) or 0.0

    assert value("vae_serve_requests_total", method="Decode", code="OK", model=RGB) >= 1
    assert value("vae_serve_requests_total", method="http.Decode", code="OK", model=GREY) >= 1
    assert value("vae_serve_requests_total", method="Decode", code="NOT_FOUND", model="") >= 1
    assert value("vae_serve_request_duration_seconds_count", method="Decode", code="OK", model=RGB) >= 1
    for model in (GREY, RGB):
        assert value("vae_serve_batch_size_rows_count", model=model, graph="decoder", version="1") >= 1
        success = {"model": model, "graph": "decoder", "version": "1", "result": "success"}
        assert value("vae_serve_graph_request_duration_seconds_count", **success) >= 1
        info = {"name": model, "version": "1", "execution_provider": "CPUExecutionProvider"}
        assert value("vae_serve_model_info", **info) == 1
    labelled = {
        sample.labels["model"]
        for family in registry.collect()
        for sample in family.samples
        if "model" in sample.labels
    }
    assert labelled <= {"", GREY, RGB}, labelled


def test_without_a_default_a_request_must_name_its_model(tmp_path):
    server = RunningServer(model_repository=two_models(tmp_path))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "no model named, and 2 are served (grey, rgb): name one" in caught.value.details()
            assert stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=RGB), timeout=10).name == RGB
            ready = oip_grpc.GRPCInferenceServiceStub(channel).ModelReady
            with pytest.raises(grpc.RpcError) as caught:
                ready(oip.ModelReadyRequest(name="vae_decoder"), timeout=10)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # no default: no aliases
            assert ready(oip.ModelReadyRequest(name="grey_decoder"), timeout=10).ready
        url = f"http://127.0.0.1:{server.server.http_port}"
        assert httpx.get(f"{url}/v1/models").json()["default"] is None
        assert httpx.get(f"{url}/v1/model").status_code == 400
    finally:
        server.stop()


def test_a_new_version_of_the_second_model_loads_and_the_first_is_untouched(tmp_path):
    root = two_models(tmp_path)
    server = RunningServer(model_repository=root, default_model=GREY, repository_poll_s=0.05)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)

            def info(model: str) -> vae_pb2.ModelInfo:
                return stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=model), timeout=10)

            staged = write_model(root, RGB, version=".2.staging")  # published atomically, as vae-train does
            staged.rename(root / RGB / "2")
            wait_for(lambda: info(RGB).version == "2", "rgb version 2 served")
            assert list(info(RGB).loaded_versions) == ["1", "2"]
            assert (info(GREY).version, list(info(GREY).loaded_versions)) == ("1", ["1"])
            pinned = stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(ones(RGB)), model=RGB, model_version="1"))
            assert pinned.model_version == "1"
        registry = server.server.metrics.registry
        labels = {"name": RGB, "execution_provider": "CPUExecutionProvider"}
        assert registry.get_sample_value("vae_serve_model_info", {**labels, "version": "2"}) == 1
        assert registry.get_sample_value("vae_serve_model_info", {**labels, "version": "1"}) == 0
        grey = {"name": GREY, "version": "1", "execution_provider": "CPUExecutionProvider"}
        assert registry.get_sample_value("vae_serve_model_info", grey) == 1
        assert registry.get_sample_value("vae_serve_model_loads_total", {"result": "loaded"}) == 1
    finally:
        server.stop()


def test_workers_check_every_model_before_they_start(tmp_path):
    root = two_models(tmp_path)
    graph = root / RGB / "1" / "encoder.onnx"
    graph.write_bytes(b"\0" * graph.stat().st_size)  # the second model's graph, not the card's
    ports = [str(free_port()) for _ in range(3)]
    cmd = [sys.executable, "-m", "vae_serve.server.cli", "--workers", "2", "--model-repository", str(root)]
    cmd += ["--host", "127.0.0.1", "--port", ports[0], "--http-port", ports[1], "--metrics-port", ports[2]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("vae-serve: error: ") and "rgb/1/encoder.onnx: sha256" in line, line


def test_openapi_names_the_models_served(http):
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/models", "/v1/models/{model}", "/v1/models/{model}/decode", "/v1/decode"} <= set(paths)

    def parameter(path: str, method: str, name: str) -> dict:
        (found,) = [p for p in paths[path][method]["parameters"] if p.get("name") == name]
        return found

    model = parameter("/v1/models/{model}/decode", "post", "model")
    assert (model["in"], model["required"], model["schema"]["enum"], model["example"]) == (
        "path",
        True,
        [GREY, RGB],
        GREY,
    )
    oip_names = parameter("/v2/models/{model_name}/infer", "post", "model_name")["schema"]["enum"]
    assert oip_names[:4] == ["vae_encoder", "vae_decoder", "grey_encoder", "grey_decoder"]
    decode = paths["/v1/models/{model}/decode"]["post"]["requestBody"]["content"]["application/json"]
    assert len(decode["example"]["z"][0]) == SHAPES[GREY][1]  # the example is the default model's


def test_spans_carry_the_model_resolved(served, stub, spans):
    stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=RGB), timeout=10)  # a control call computes nothing
    stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(ones(RGB, 1)), model=RGB), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(ones(RGB, 1)), model="blue"), timeout=10)

    def finished(name: str) -> list:
        return [s for s in spans.get_finished_spans() if s.name == name]

    wait_for(lambda: len(finished("Decode")) == 2 and finished("onnxruntime.run"), "the spans")
    (info,) = finished("GetModelInfo")
    assert info.attributes["vae.model"] == RGB
    assert [s.attributes["vae.model"] for s in finished("Decode")] == [RGB, "-"]
    assert {s.attributes["vae.model"] for s in finished("onnxruntime.run")} == {RGB}
