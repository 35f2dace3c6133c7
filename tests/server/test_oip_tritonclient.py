"""The Open Inference Protocol with the real tritonclient as the client, checked against ORT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import DEFAULT_VERSION

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.inference import model_config_pb2 as oip_config

CALLS = Path(__file__).with_name("tritonclient_calls.py")
L = 32


def triton(running, scenario: str, **kwargs) -> dict:
    cmd = [sys.executable, str(CALLS), running.target, scenario, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_health_readiness_and_metadata(running):
    h = triton(running, "health", version=DEFAULT_VERSION)
    assert h["live"] and h["ready"] and h["encoder_ready"] and h["decoder_ready"]
    assert h["server"]["name"] == "vae-serve"
    assert h["vae_encoder"] == {
        "versions": [DEFAULT_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": ["-1", "784"]}],
        "outputs": [
            {"name": "mean", "datatype": "FP32", "shape": ["-1", str(L)]},
            {"name": "logvar", "datatype": "FP32", "shape": ["-1", str(L)]},
        ],
    }
    assert h["vae_decoder"]["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", str(L)]}]


def test_infer_both_models_with_tritonclient(running, direct):
    x = np.random.default_rng(1).random((3, 784), dtype=np.float32)
    got = triton(running, "infer", model="vae_encoder", name="x", rows=x.tolist())
    assert got["id"] == "req-7" and got["model_version"] == DEFAULT_VERSION
    mean, logvar = direct[0].run(["mean", "logvar"], {"x": x})
    np.testing.assert_allclose(np.array(got["outputs"]["mean"], np.float32), mean, atol=1e-6)
    np.testing.assert_allclose(np.array(got["outputs"]["logvar"], np.float32), logvar, atol=1e-6)
    decoded = triton(running, "infer", model="vae_decoder", name="z", rows=mean.tolist())
    want = direct[1].run(None, {"z": mean})[0]
    np.testing.assert_allclose(np.array(decoded["outputs"]["x"], np.float32), want, atol=1e-6)


def test_a_stream_answers_each_request_and_goes_on_after_a_refusal(running, direct):
    """tritonclient's start_stream / async_stream_infer: every request answered with its id and
    the graph's output; a refused one is an error on the stream, which goes on."""
    z = np.random.default_rng(3).standard_normal((200, L), dtype=np.float32)
    bad = [5, 150]
    got = triton(running, "stream", count=200, width=L, seed=3, bad=bad)
    errors = [answer["error"] for key, answer in got.items() if key.startswith("error")]
    assert len(errors) == 2 and all("vae_decoder takes one input 'z', got 'zz'" in e for e in errors)
    want = direct[1].run(None, {"z": z})[0]
    for i in set(range(200)) - set(bad):
        np.testing.assert_allclose(np.array(got[str(i)]["x"], np.float32)[0], want[i], atol=1e-6)


def test_typed_fp32_contents_are_accepted(running, direct):
    """tritonclient only sends raw bytes, so the typed encoding is checked with our own stub."""
    z = np.random.default_rng(2).standard_normal((2, L), dtype=np.float32)
    tensor = oip.ModelInferRequest.InferInputTensor(name="z", datatype="FP32", shape=[2, L])
    tensor.contents.fp32_contents.extend(z.ravel().tolist())
    with grpc.insecure_channel(running.target) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            oip.ModelInferRequest(model_name="vae_decoder", inputs=[tensor]), timeout=10
        )
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("x", "FP32", [2, 784])]
    x = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 784)
    np.testing.assert_allclose(x, direct[1].run(None, {"z": z})[0], atol=1e-6)


def test_requested_outputs_only(running):
    x = np.full((1, 784), 0.5).tolist()
    got = triton(running, "infer", model="vae_encoder", name="x", rows=x, outputs=["logvar"])
    assert list(got["outputs"]) == ["logvar"]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"model": "vae_other", "name": "x"}, "StatusCode.NOT_FOUND", "no model 'vae_other'"),
        (
            {"model": "vae_encoder", "name": "x", "version": "9"},
            "StatusCode.NOT_FOUND",
            "version '9' is not loaded",
        ),
        ({"model": "vae_encoder", "name": "pixels"}, "StatusCode.INVALID_ARGUMENT", "takes one input 'x'"),
        (
            {"model": "vae_encoder", "name": "x", "datatype": "FP64"},
            "StatusCode.INVALID_ARGUMENT",
            "datatype 'FP64' is not supported",
        ),
        ({"model": "vae_decoder", "name": "z"}, "StatusCode.INVALID_ARGUMENT", "expected shape [N, 32]"),
        (
            {"model": "vae_encoder", "name": "x", "outputs": ["z"]},
            "StatusCode.INVALID_ARGUMENT",
            "has no output 'z'",
        ),
    ],
)
def test_errors_carry_the_right_status(running, kwargs, status, message):
    rows = np.full((2, 784), 0.5).tolist()
    got = triton(running, "infer", rows=rows, **kwargs)
    assert got["error"] == status
    assert message in got["message"]


def test_lookup_errors(running):
    got = triton(running, "errors")
    assert got["unknown_model"].startswith("StatusCode.NOT_FOUND")
    assert got["unknown_version"].startswith("StatusCode.NOT_FOUND")


# The KServe spec's messages are whole; Triton's extension messages are kept in part (trimmed).
SPEC_MESSAGES = (
    "ServerLiveResponse",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelInferRequest",
    "ModelInferResponse",
    "InferParameter",
    "InferTensorContents",
)


def test_wire_compatible_with_tritonclient_messages(running):
    """Every field of ours is tritonclient's (number, name, type); the spec's messages have all of theirs."""
    theirs = triton(running, "descriptor")

    def describe(d) -> dict:
        return {
            "fields": sorted(
                [f.number, f.name, f.type, (f.message_type or f.enum_type).name if f.type in (11, 14) else ""]
                for f in d.fields
            ),
            "nested": {n.name: describe(n) for n in d.nested_types},
            "enums": {e.name: sorted([v.number, v.name] for v in e.values) for e in d.enum_types},
        }

    def within(ours: dict, their: dict, where: str) -> None:
        assert all(f in their["fields"] for f in ours["fields"]), where
        for name, nested in ours["nested"].items():
            within(nested, their["nested"][name], f"{where}.{name}")
        for name, values in ours["enums"].items():
            assert all(v in their["enums"][name] for v in values), f"{where}.{name}"

    for file in (oip.DESCRIPTOR, oip_config.DESCRIPTOR):
        for name, message in file.message_types_by_name.items():
            within(describe(message), theirs["messages"][name], name)
        for name, enum in file.enum_types_by_name.items():
            assert all([v.number, v.name] in theirs["enums"][name] for v in enum.values), name
    for name in SPEC_MESSAGES:
        assert describe(oip.DESCRIPTOR.message_types_by_name[name]) == theirs["messages"][name], name
