"""The Open Inference Protocol answers alike over gRPC and REST: every case is sent over both to one
real `vae-serve` process, and both answers must agree (status class, message text, outputs).

Each case goes in both encodings a transport has: `typed` (gRPC fp32_contents, REST JSON data)
and `raw` (gRPC raw_input_contents, REST binary tensor data), with the outputs asked as JSON or
binary data to match.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import orjson
import pytest
from support import DEFAULT_VERSION, start_vae_serve_http

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve.errors import InvalidInput, ModelNotFound, ServingError
from vae_serve.server.protocol.status import HTTP_STATUS, STATUS_CODES

D, L = 784, 32
MAX_VALUES = 8192 * L  # the default row limit, in values of a latent
ENCODINGS = ("typed", "raw")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: list[int]
    values: np.ndarray  # float32, flat; its size may disagree with the shape on purpose
    datatype: str = "FP32"


def zeros(name: str, shape: list[int], count: int | None = None, value: float = 0.0) -> Tensor:
    size = int(np.prod(shape)) if count is None else count
    return Tensor(name, shape, np.full(max(size, 0), value, np.float32))


def latents(rows: int = 2) -> Tensor:
    return Tensor("z", [rows, L], np.random.default_rng(rows).standard_normal(rows * L, dtype=np.float32))


def pixels(rows: int = 2) -> Tensor:
    return Tensor("x", [rows, D], np.random.default_rng(rows).random(rows * D, dtype=np.float32))


@dataclass(frozen=True)
class Case:
    model: str
    inputs: list[Tensor]
    outputs: list[str] = field(default_factory=list)
    version: str = ""
    id: str | None = None
    answer: list[str] | type[ServingError] = field(default_factory=list)  # output names, or the error
    message: str = ""  # the error's whole text
    encodings: tuple[str, ...] = ENCODINGS


# Every OIP model served, as an unknown name's error lists them.
OIP_NAMES = "vae_encoder, vae_decoder, fashion-vae_encoder, fashion-vae_decoder"

CASES = {
    "every output by default": Case("vae_encoder", [pixels()], answer=["mean", "logvar"]),
    "outputs in the order asked": Case(
        "vae_encoder", [pixels()], ["logvar", "mean"], answer=["logvar", "mean"]
    ),
    "one output of two": Case("vae_encoder", [pixels()], ["logvar"], answer=["logvar"]),
    "the decoder": Case("vae_decoder", [latents(3)], ["x"], answer=["x"]),
    "a pinned version and an id": Case(
        "vae_decoder", [latents()], version=DEFAULT_VERSION, id="case-7", answer=["x"]
    ),
    "unknown model": Case(
        "vae_other",
        [latents()],
        answer=ModelNotFound,
        message=f"no model 'vae_other'; models: {OIP_NAMES}",
    ),
    "unknown version": Case(
        "vae_decoder",
        [latents()],
        version="9",
        answer=ModelNotFound,
        message=f"model version '9' is not loaded (loaded: {DEFAULT_VERSION})",
    ),
    "wrong input name": Case(
        "vae_decoder",
        [zeros("x", [1, L])],
        answer=InvalidInput,
        message="vae_decoder takes one input 'z', got 'x'",
    ),
    "no input": Case(
        "vae_decoder", [], answer=InvalidInput, message="vae_decoder takes one input 'z', got none"
    ),
    "two inputs": Case(
        "vae_decoder",
        [latents(1), latents(1)],
        answer=InvalidInput,
        message="vae_decoder takes one input 'z', got 'z', 'z'",
    ),
    "wrong datatype": Case(
        "vae_decoder",
        [Tensor("z", [1, L], np.zeros(L, np.float32), "FP64")],
        answer=InvalidInput,
        message="input 'z': datatype 'FP64' is not supported; use FP32",
    ),
    "shape of rank 3": Case(
        "vae_decoder",
        [zeros("z", [1, 1, L])],
        answer=InvalidInput,
        message="input 'z': shape must be [rows, columns], got rank 3",
    ),
    "shape of rank 1": Case(
        "vae_decoder",
        [zeros("z", [L])],
        answer=InvalidInput,
        message="input 'z': shape must be [rows, columns], got rank 1",
    ),
    "negative dimension": Case(
        "vae_decoder",
        [zeros("z", [-1, L], 0)],
        answer=InvalidInput,
        message=f"input 'z': shape [-1, {L}] is not a valid tensor shape",
    ),
    "too many values": Case(
        "vae_decoder",
        [zeros("z", [100_000, L], 0)],
        answer=InvalidInput,
        message=f"input 'z': shape [100000, {L}] holds {100_000 * L} values, over the {MAX_VALUES} a "
        "request may carry; send fewer rows",
    ),
    "raw size off the shape": Case(
        "vae_decoder",
        [zeros("z", [2, L], L)],
        answer=InvalidInput,
        message=f"input 'z': {4 * L} bytes, but FP32 shape [2, {L}] needs {8 * L}",
        encodings=("raw",),
    ),
    "contents count off the shape": Case(
        "vae_decoder",
        [zeros("z", [2, L], L)],
        answer=InvalidInput,
        message=f"input 'z': {L} values, but shape [2, {L}] needs {2 * L}",
        encodings=("typed",),
    ),
    "an output asked twice": Case(
        "vae_decoder",
        [latents()],
        ["x", "x"],
        answer=InvalidInput,
        message="outputs requested more than once: 'x', 'x'",
    ),
    "an unknown output": Case(
        "vae_encoder",
        [pixels()],
        ["mean", "z"],
        answer=InvalidInput,
        message="vae_encoder has no output 'z'; outputs: mean, logvar",
    ),
    "an over-long id": Case(
        "vae_decoder",
        [latents()],
        id="i" * 1025,
        answer=InvalidInput,
        message="id: 1025 characters, over the 1024 echoed back",
    ),
    "wrong width": Case(
        "vae_decoder",
        [zeros("z", [1, 3])],
        answer=InvalidInput,
        message=f"z: expected shape [N, {L}], got [1, 3]",
    ),
    "empty batch": Case(
        "vae_decoder",
        [zeros("z", [0, L])],
        answer=InvalidInput,
        message="z: empty batch (N = 0); send at least one row",
    ),
    "pixels outside [0, 1]": Case(
        "vae_encoder",
        [zeros("x", [1, D], value=2.0)],
        answer=InvalidInput,
        message="x: row 0 has values outside [0, 1]; pixels are intensities in [0, 1]",
    ),
    "NaN": Case(  # JSON has no NaN: raw bytes only
        "vae_decoder",
        [zeros("z", [1, L], value=np.nan)],
        answer=InvalidInput,
        message="z: row 0 holds NaN or infinity; values must be finite",
        encodings=("raw",),
    ),
}


@dataclass(frozen=True)
class Answer:
    status: str  # the gRPC code's name, or the HTTP status
    message: str = ""
    version: str = ""
    id: str | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[grpc.Channel, httpx.Client]]:
    proc, grpc_port, http_port = start_vae_serve_http()
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
            httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http,
        ):
            yield channel, http
    finally:
        proc.terminate()
        proc.wait(30)


def over_grpc(channel: grpc.Channel, case: Case, encoding: str) -> Answer:
    request = oip.ModelInferRequest(model_name=case.model, model_version=case.version, id=case.id or "")
    for tensor in case.inputs:
        sent = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if encoding == "raw":
            request.raw_input_contents.append(tensor.values.astype("<f4").tobytes())
        else:
            sent.contents.fp32_contents.extend(tensor.values)
    for name in case.outputs:
        request.outputs.add(name=name)
    try:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        return Answer(exc.code().name, exc.details())
    outputs = {
        o.name: np.frombuffer(raw, "<f4").reshape(o.shape)
        for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
    }
    return Answer("OK", version=reply.model_version, id=reply.id or None, outputs=outputs)


def over_rest(http: httpx.Client, case: Case, encoding: str) -> Answer:
    raw = encoding == "raw"
    inputs = []
    for tensor in case.inputs:
        sent = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if raw:
            sent["parameters"] = {"binary_data_size": tensor.values.nbytes}
        else:
            sent["data"] = tensor.values.tolist()
        inputs.append(sent)
    header: dict = {"inputs": inputs, "parameters": {"binary_data_output": raw}}
    if case.id is not None:
        header["id"] = case.id
    if case.outputs:
        header["outputs"] = [{"name": name} for name in case.outputs]
    body, headers = orjson.dumps(header), {}
    if raw:
        headers["inference-header-content-length"] = str(len(body))
        body += b"".join(t.values.astype("<f4").tobytes() for t in case.inputs)
    path = f"/v2/models/{case.model}" + (f"/versions/{case.version}" if case.version else "") + "/infer"
    reply = http.post(path, content=body, headers=headers)
    if reply.status_code != 200:
        return Answer(str(reply.status_code), reply.json()["error"])
    length = reply.headers.get("inference-header-content-length")
    end = len(reply.content) if length is None else int(length)
    answer, data = orjson.loads(reply.content[:end]), memoryview(reply.content)[end:]
    outputs = {}
    for o in answer["outputs"]:
        if "data" in o:
            array = np.asarray(o["data"], np.float32)
        else:
            size = o["parameters"]["binary_data_size"]
            array, data = np.frombuffer(data[:size], "<f4"), data[size:]
        outputs[o["name"]] = array.reshape(o["shape"])
    return Answer("OK", version=answer["model_version"], id=answer.get("id"), outputs=outputs)


PARAMS = [
    pytest.param(name, encoding, id=f"{name}-{encoding}")
    for name, c in CASES.items()
    for encoding in c.encodings
]


@pytest.mark.parametrize(("name", "encoding"), PARAMS)
def test_both_transports_answer_alike(server, name, encoding):
    channel, http = server
    case = CASES[name]
    grpc_answer, rest_answer = over_grpc(channel, case, encoding), over_rest(http, case, encoding)
    if isinstance(case.answer, list):
        for answer in (grpc_answer, rest_answer):
            assert (answer.status, answer.message) == ("OK", "")
            assert (answer.version, answer.id, list(answer.outputs)) == (
                DEFAULT_VERSION,
                case.id,
                case.answer,
            )
        for output in case.answer:
            np.testing.assert_allclose(grpc_answer.outputs[output], rest_answer.outputs[output], atol=1e-6)
        return
    assert grpc_answer.status == STATUS_CODES[case.answer].name
    assert rest_answer.status == str(HTTP_STATUS[case.answer])
    assert grpc_answer.message == rest_answer.message == case.message


def metadata_over_grpc(channel: grpc.Channel, path: str, model: str, version: str) -> tuple[str, object]:
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    try:
        if path == "ready":
            return "OK", stub.ModelReady(oip.ModelReadyRequest(name=model, version=version), timeout=30).ready
        reply = stub.ModelMetadata(oip.ModelMetadataRequest(name=model, version=version), timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()

    def tensors(metadata) -> list[dict]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata]

    fields = {"name": reply.name, "versions": list(reply.versions), "platform": reply.platform}
    return "OK", {**fields, "inputs": tensors(reply.inputs), "outputs": tensors(reply.outputs)}


def metadata_over_rest(http: httpx.Client, path: str, model: str, version: str) -> tuple[str, object]:
    url = (
        f"/v2/models/{model}"
        + (f"/versions/{version}" if version else "")
        + ("/ready" if path == "ready" else "")
    )
    reply = http.get(url)
    if reply.status_code != 200:
        return str(reply.status_code), reply.json()["error"]
    return "OK", reply.json()["ready"] if path == "ready" else reply.json()


@pytest.mark.parametrize("path", ["metadata", "ready"])
@pytest.mark.parametrize(
    ("model", "version", "refusal"),
    [
        ("vae_encoder", "", None),
        ("vae_decoder", DEFAULT_VERSION, None),
        (
            "vae_other",
            "",
            f"no model 'vae_other'; models: {OIP_NAMES}",
        ),
        ("vae_decoder", "9", f"model version '9' is not loaded (loaded: {DEFAULT_VERSION})"),
    ],
)
def test_metadata_and_readiness_answer_alike(server, path, model, version, refusal):
    channel, http = server
    grpc_answer = metadata_over_grpc(channel, path, model, version)
    rest_answer = metadata_over_rest(http, path, model, version)
    if refusal is None:
        assert grpc_answer == rest_answer
        status, answer = grpc_answer
        assert status == "OK" and (answer is True if path == "ready" else answer["name"] == model)
    else:
        assert grpc_answer == (STATUS_CODES[ModelNotFound].name, refusal)
        assert rest_answer == (str(HTTP_STATUS[ModelNotFound]), refusal)
