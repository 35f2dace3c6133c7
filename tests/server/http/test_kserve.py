"""KServe v2 REST with the real clients: tritonclient.http (JSON and binary) and plain httpx."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from support import DEFAULT_VERSION, read_reply

CALLS = Path(__file__).with_name("tritonclient_http_calls.py")
L, D = 32, 784


def triton(http_server, scenario: str, **kwargs) -> dict:
    cmd = [sys.executable, str(CALLS), http_server.address, scenario, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_health_and_metadata_with_tritonclient(http_server):
    h = triton(http_server, "health", version=DEFAULT_VERSION)
    assert h["live"] and h["ready"] and h["encoder_ready"]
    assert h["server"] == {
        "name": "vae-serve",
        "version": h["server"]["version"],
        "extensions": ["binary_tensor_data", "model_configuration", "model_repository", "statistics"],
    }
    assert h["vae_encoder"] == {
        "name": "vae_encoder",
        "versions": [DEFAULT_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, D]}],
        "outputs": [
            {"name": "mean", "datatype": "FP32", "shape": [-1, L]},
            {"name": "logvar", "datatype": "FP32", "shape": [-1, L]},
        ],
    }
    assert h["vae_decoder"]["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, L]}]
    assert h["pinned"] == "vae_decoder"


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_equals_onnx_runtime_in_json_and_binary(http_server, direct, binary_in, binary_out):
    x = np.random.default_rng(1).random((3, D), dtype=np.float32)
    outputs = [["mean", binary_out], ["logvar", binary_out]]
    got = triton(
        http_server,
        "infer",
        model="vae_encoder",
        name="x",
        rows=x.tolist(),
        binary_in=binary_in,
        outputs=outputs,
    )
    assert got["id"] == "req-7" and got["model_version"] == DEFAULT_VERSION
    assert got["binary"] == {"mean": binary_out, "logvar": binary_out}
    mean, logvar = direct[0].run(["mean", "logvar"], {"x": x})
    np.testing.assert_allclose(np.array(got["outputs"]["mean"], np.float32), mean, atol=1e-6)
    np.testing.assert_allclose(np.array(got["outputs"]["logvar"], np.float32), logvar, atol=1e-6)


def test_outputs_default_to_all_binary_and_a_selection_returns_only_it(http_server, direct):
    z = np.random.default_rng(2).standard_normal((2, L), dtype=np.float32)
    everything = triton(http_server, "infer", model="vae_decoder", name="z", rows=z.tolist(), binary_in=True)
    assert everything["binary"] == {"x": True}  # tritonclient asks binary_data_output when none are named
    np.testing.assert_allclose(
        np.array(everything["outputs"]["x"]), direct[1].run(None, {"z": z})[0], atol=1e-6
    )
    x = np.random.default_rng(3).random((2, D), dtype=np.float32)
    only = triton(
        http_server,
        "infer",
        model="vae_encoder",
        name="x",
        rows=x.tolist(),
        binary_in=True,
        outputs=[["logvar", False]],
    )
    assert list(only["outputs"]) == ["logvar"] and only["binary"] == {"logvar": False}


def test_a_pinned_version_and_an_unknown_one(http_server):
    z = [[0.0] * L]
    assert (
        triton(
            http_server,
            "infer",
            model="vae_decoder",
            name="z",
            rows=z,
            binary_in=True,
            version=DEFAULT_VERSION,
        )["model_version"]
        == DEFAULT_VERSION
    )
    missing = triton(http_server, "infer", model="vae_decoder", name="z", rows=z, binary_in=True, version="9")
    assert missing["status"] == "404" and "model version '9' is not loaded" in missing["error"]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
def test_tritonclient_aio_labels_its_bodies_octet_stream_and_is_served(http_server, direct, binary_in):
    z = np.random.default_rng(5).standard_normal((2, L), dtype=np.float32)
    got = triton(http_server, "aio", model="vae_decoder", name="z", rows=z.tolist(), binary_in=binary_in)
    np.testing.assert_allclose(np.array(got["outputs"]["x"]), direct[1].run(None, {"z": z})[0], atol=1e-6)
    assert {"name": "vae_decoder", "version": DEFAULT_VERSION, "state": "READY", "reason": ""} in got["index"]


# What may label a body (parameters such as charset aside): JSON, or the octet-stream that the KServe
# SDK gives a binary request and aiohttp (tritonclient.http.aio) any body; none, as tritonclient.http
# sends, means JSON. What a web page can send without a CORS preflight is refused.
REFUSED = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"]


@pytest.mark.parametrize("kind", REFUSED)
def test_a_body_labelled_otherwise_is_a_415_before_it_is_computed(http, kind):
    for path in ("/v2/models/vae_decoder/infer", "/v2/repository/index"):
        reply = http.post(path, content=orjson.dumps(_z()), headers={"Content-Type": kind})
        assert reply.status_code == 415, (path, reply.text)
        assert reply.headers["content-type"] == "application/json"
        error = reply.json()["error"]
        assert "application/json" in error and "application/octet-stream" in error and "\n" not in error


@pytest.mark.parametrize(
    "kind",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/octet-stream"],
)
def test_json_and_octet_stream_bodies_are_served(http, kind):
    assert _infer(http, _z(), **{"Content-Type": kind}).status_code == 200
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "z", "datatype": "FP32", "shape": [1, L], "parameters": {"binary_data_size": 4 * L}}
            ]
        }
    )
    binary = _infer(
        http,
        header + bytes(4 * L),
        **{"Content-Type": kind, "Inference-Header-Content-Length": str(len(header))},
    )
    assert binary.status_code == 200, binary.text


def test_no_content_type_is_json_but_not_from_a_browser(http):
    """tritonclient.http labels no body; a browser can send an unlabelled body (a Blob without a
    type) without a preflight, but it always says where the page came from (Origin)."""
    assert _infer(http, _z()).status_code == 200
    refused = _infer(http, _z(), Origin="https://elsewhere.example")
    assert refused.status_code == 415 and "Content-Type" in refused.json()["error"]


def test_nested_json_data_is_accepted(http, direct):
    z = np.random.default_rng(4).standard_normal((2, L), dtype=np.float32)
    body = {"id": "n", "inputs": [{"name": "z", "datatype": "FP32", "shape": [2, L], "data": z.tolist()}]}
    reply = http.post("/v2/models/vae_decoder/infer", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()["outputs"][0]
    assert out["shape"] == [2, D] and reply.json()["id"] == "n"
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(2, D), direct[1].run(None, {"z": z})[0], atol=1e-6
    )


def _infer(http, body: bytes | dict, **headers: str):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return http.post("/v2/models/vae_decoder/infer", content=content, headers=headers)


def _z(shape=(1, L), data=None, datatype="FP32", name="z") -> dict:
    data = [0.0] * int(np.prod(shape)) if data is None else data
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": data}]}


BAD = {
    "malformed JSON": (b"{not json", {}, 400, "not valid JSON"),
    "not an object": (b"[1, 2]", {}, 400, "expected a JSON object"),
    "NaN literal": (
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 1], "data": [NaN]}]}',
        {},
        400,
        "not valid JSON",
    ),
    "wrong datatype": (_z(datatype="FP64"), {}, 400, "datatype 'FP64' is not supported"),
    "wrong input name": (_z(name="x"), {}, 400, "takes one input 'z'"),
    "shape and data disagree": (
        _z(shape=(2, L), data=[0.0] * L),
        {},
        400,
        f"{L} values, but shape [2, {L}] needs {2 * L}",
    ),
    "wrong width": (_z(shape=(1, 3), data=[0.0] * 3), {}, 400, "z"),
    "strings for numbers": (_z(data=["0.5"] * L), {}, 400, "only numbers"),
    "ragged data": (_z(shape=(2, 2), data=[[1.0], [1.0, 2.0]]), {}, 400, "ragged"),
    "over the row limit": (_z(shape=(100_000, L), data=[]), {}, 400, "send fewer rows"),
    "negative shape": (_z(shape=(-1, L), data=[]), {}, 400, "not a valid tensor shape"),
    "header length past the body": (
        _z(),
        {"Inference-Header-Content-Length": "999999"},
        400,
        "not a length within",
    ),
    "binary size lies": (
        orjson.dumps(
            {
                "inputs": [
                    {"name": "z", "datatype": "FP32", "shape": [1, L], "parameters": {"binary_data_size": 4}}
                ]
            }
        )
        + b"\0" * 4,
        {},
        400,
        "4 bytes, but FP32 shape [1, 32] needs 128",
    ),
    "unknown output": ({**_z(), "outputs": [{"name": "nope"}]}, {}, 400, "has no output 'nope'"),
    "huge float": (_z(data=[1e39] * L), {}, 400, "z"),
    "gzip body": (_z(), {"Content-Encoding": "gzip"}, 400, "Content-Encoding"),
    "bad timeout header": (_z(), {"X-Timeout-Ms": "soon"}, 400, "x-timeout-ms"),
    "a superscript digit for a timeout": (_z(), {"X-Timeout-Ms": "²".encode("latin-1")}, 400, "x-timeout-ms"),
    "a superscript digit for a length": (
        _z(),
        {"Inference-Header-Content-Length": "²".encode("latin-1")},
        400,
        "not a length",
    ),
    "a 5000-digit length": (_z(), {"Inference-Header-Content-Length": "9" * 5000}, 400, "not a length"),
    "a shape of rank 0": (_z(shape=(), data=[0.5]), {}, 400, "shape must be [rows, columns]"),
    "a shape of rank 1": (_z(shape=(32,), data=[0.5] * 32), {}, 400, "shape must be [rows, columns]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_400_with_a_json_error(http, case):
    body, headers, status, text = BAD[case]
    if case == "binary size lies":
        headers = {"Inference-Header-Content-Length": str(len(body) - 4)}
    reply = _infer(http, body, **headers)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert text in reply.json()["error"]
    assert len(reply.json()["error"]) < 400


def test_lookup_errors_are_404_and_unknown_routes_are_json(http):
    assert http.post("/v2/models/nope/infer", json=_z()).json() == {
        "error": "no model 'nope'; models: vae_encoder, vae_decoder, fashion-vae_encoder, fashion-vae_decoder"
    }
    assert http.get("/v2/models/nope").status_code == 404
    assert http.get("/v2/models/vae_decoder/versions/7/ready").status_code == 404
    lost = http.get("/v2/nowhere")
    assert lost.status_code == 404 and lost.json() == {"error": "no route '/v2/nowhere'"}
    wrong = http.get("/v2/models/vae_decoder/infer")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]
    assert wrong.headers["allow"] == "POST"


def test_a_body_over_the_message_limit_is_refused_before_it_is_read(http_server):
    host, port = http_server.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/vae_decoder/infer HTTP/1.1\r\nHost: x\r\n"
            b"Inference-Header-Content-Length: 10\r\nContent-Length: 999999999\r\n\r\n"
        )  # and not one byte of the body
        reply = read_reply(sock)
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "over the 33554432-byte message limit (--max-message-bytes)" in reply


def test_the_request_id_is_echoed_or_made(http):
    assert http.get("/v2", headers={"x-request-id": "abc-1"}).headers["x-request-id"] == "abc-1"
    assert len(http.get("/v2").headers["x-request-id"]) == 32
