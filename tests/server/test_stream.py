"""Both streams, the native `Stream` and Triton's `ModelStreamInfer`, as an attacker would use
them: a client that sends and never reads its answers is stopped being read, and nothing it sent
is lost once it reads again; and what each says of a request it refuses."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from support import RunningServer, wait_for

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.grpc.stream import MAX_IN_FLIGHT
from vae_serve.tensor import from_tensor, to_tensor

L = 32
ROWS = 64  # an answer of 64 decoded rows is about 200 KB
SENT = 1000


def _oip_decode(rid: str, z: np.ndarray) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="vae_decoder", id=rid, raw_input_contents=[z.tobytes()])
    request.inputs.add(name="z", datatype="FP32", shape=list(z.shape))
    return request


@dataclass(frozen=True)
class Streamed:
    """One streaming method as these tests drive it: a Decode request on it, and its answer read."""

    method: str  # its label in metrics
    path: str
    call: Callable[[grpc.Channel], Any]
    decode: Callable[[str, np.ndarray], Message]
    answer_id: Callable[[Any], str]
    error: Callable[[Any], str]  # "" when the answer is no refusal
    pixels: Callable[[Any], bytes]
    response: type[Message]


STREAMS = [
    Streamed(
        "Stream",
        "/vae.v1.VAEService/Stream",
        lambda channel: vae_pb2_grpc.VAEServiceStub(channel).Stream,
        lambda rid, z: vae_pb2.StreamRequest(id=rid, decode=vae_pb2.DecodeRequest(z=to_tensor(z))),
        lambda answer: answer.id,
        lambda answer: answer.error.message,
        lambda answer: answer.decode.x.data,
        vae_pb2.StreamResponse,
    ),
    Streamed(
        "ModelStreamInfer",
        "/inference.GRPCInferenceService/ModelStreamInfer",
        lambda channel: oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer,
        _oip_decode,
        lambda answer: answer.infer_response.id,
        lambda answer: answer.error_message,
        lambda answer: answer.infer_response.raw_output_contents[0],
        oip.ModelStreamInferResponse,
    ),
]


@pytest.fixture(params=STREAMS, ids=[s.method for s in STREAMS])
def streamed(request) -> Streamed:
    return request.param


def answered(running, method: str) -> float:
    """Stream requests answered so far, whatever their status or other labels."""
    family = running.server.metrics.requests
    return sum(
        sample.value
        for metric in family.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("method") == method
    )


def requests(streamed: Streamed, sent: list[int]) -> Iterator[Message]:
    z = np.random.default_rng(0).standard_normal((ROWS, L), dtype=np.float32)
    for i in range(SENT):
        sent.append(i)
        yield streamed.decode(str(i), z)


def test_a_stream_whose_answers_are_not_read_stops_being_read(running, streamed):
    before = answered(running, streamed.method)
    sent: list[int] = []
    with grpc.insecure_channel(running.target) as channel:
        answers = streamed.call(channel)(requests(streamed, sent))
        # The first answers are computed, then the stream waits for its client to read them.
        wait_for(
            lambda: answered(running, streamed.method) - before >= MAX_IN_FLIGHT,
            "the first requests answered",
        )
        with grpc.insecure_channel(running.target) as other:
            decode = oip_grpc.GRPCInferenceServiceStub(other).ModelInfer
            for _ in range(100):  # everyone else is served meanwhile
                one = oip.ModelInferRequest(model_name="vae_decoder", raw_input_contents=[bytes(4 * L)])
                one.inputs.add(name="z", datatype="FP32", shape=[1, L])
                assert len(decode(one, timeout=30).raw_output_contents[0]) == 4 * 784
        held = answered(running, streamed.method) - before
        assert held < SENT / 2, f"{held} of the unread stream's requests were computed"
        assert len(sent) < SENT, "the client could send every request: nothing held it"
        # Read now: every request is answered, in full.
        ids = set()
        for answer in answers:
            assert streamed.error(answer) == ""
            assert len(streamed.pixels(answer)) == 4 * ROWS * 784
            ids.add(streamed.answer_id(answer))
            if len(ids) == SENT:
                break
        answers.cancel()
    assert ids == {str(i) for i in range(SENT)}


def test_a_stream_ends_when_its_client_ends_it(running, streamed):
    """Half-closing after the last request: every answer comes, then the call ends OK."""
    z = np.zeros((1, L), np.float32)
    with grpc.insecure_channel(running.target) as channel:
        call = streamed.call(channel)((streamed.decode(f"r{i}", z) for i in range(3)), timeout=30)
        got = sorted(streamed.answer_id(answer) for answer in call)
        assert got == ["r0", "r1", "r2"]
        assert call.code() is grpc.StatusCode.OK


def test_an_unreadable_message_is_answered_on_the_stream(running, streamed):
    """Bytes that are no request: an error answer, and the stream goes on."""
    good = streamed.decode("ok", np.zeros((1, L), np.float32))
    with grpc.insecure_channel(running.target) as channel:
        raw = channel.stream_stream(
            streamed.path,
            request_serializer=lambda message: message,
            response_deserializer=streamed.response.FromString,
        )
        answers = list(raw(iter([b"\xff\xff\xff", good.SerializeToString()]), timeout=30))
    errors = [streamed.error(a) for a in answers if streamed.error(a)]
    name = good.DESCRIPTOR.full_name
    assert len(errors) == 1 and f"request is not a valid {name}" in errors[0]
    assert [streamed.answer_id(a) for a in answers if not streamed.error(a)] == ["ok"]


def test_streams_on_one_channel_are_served_side_by_side(running, streamed):
    """Several streams at once, each answered in full."""
    results: dict[int, set[str]] = {}

    def one_stream(n: int) -> None:
        z = np.zeros((2, L), np.float32)
        call = streamed.call(channel)((streamed.decode(f"{n}-{i}", z) for i in range(50)), timeout=60)
        results[n] = {streamed.answer_id(answer) for answer in call}

    with grpc.insecure_channel(running.target) as channel:
        threads = [threading.Thread(target=one_stream, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert results == {n: {f"{n}-{i}" for i in range(50)} for n in range(4)}


def _native(channel: grpc.Channel, requests: list[vae_pb2.StreamRequest]) -> list[vae_pb2.StreamResponse]:
    return list(vae_pb2_grpc.VAEServiceStub(channel).Stream(iter(requests), timeout=30))


def test_each_native_request_is_answered_as_its_unary_call_would_be(running):
    """Encode, Decode and Sample on one stream: the unary calls' answers, under each request's id;
    a refusal carries the unary call's code and message, and the stream goes on."""
    x = np.random.default_rng(1).random((3, 784), dtype=np.float32)
    z = np.random.default_rng(2).standard_normal((2, L), dtype=np.float32)
    encode = vae_pb2.EncodeRequest(x=to_tensor(x))
    decode = vae_pb2.DecodeRequest(z=to_tensor(z))
    sample = vae_pb2.SampleRequest(num_samples=4, seed=7, decode=True)
    bad = vae_pb2.DecodeRequest(z=to_tensor(np.zeros((1, L + 1), np.float32)))
    missing = vae_pb2.DecodeRequest(z=to_tensor(z), model_version="99")
    with grpc.insecure_channel(running.target) as channel:
        stub = vae_pb2_grpc.VAEServiceStub(channel)
        unary = {"e": stub.Encode(encode), "d": stub.Decode(decode), "s": stub.Sample(sample)}
        with pytest.raises(grpc.RpcError) as bad_unary:
            stub.Decode(bad)
        with pytest.raises(grpc.RpcError) as missing_unary:
            stub.Decode(missing)
        answers = _native(
            channel,
            [
                vae_pb2.StreamRequest(id="e", encode=encode),
                vae_pb2.StreamRequest(id="bad", decode=bad),
                vae_pb2.StreamRequest(id="d", decode=decode),
                vae_pb2.StreamRequest(id="none"),
                vae_pb2.StreamRequest(id="missing", decode=missing),
                vae_pb2.StreamRequest(id="s", sample=sample),
                vae_pb2.StreamRequest(id="x" * 257, decode=decode),
            ],
        )
    by_id = {answer.id: answer for answer in answers}
    assert len(by_id) == len(answers) == 7
    assert by_id["e"].encode == unary["e"]
    assert by_id["d"].decode == unary["d"]
    assert by_id["s"].sample == unary["s"]  # a seed: bit-identical
    for rid, refused in (("bad", bad_unary.value), ("missing", missing_unary.value)):
        error = by_id[rid].error
        assert (error.code, error.message) == (refused.code().value[0], refused.details())
    assert by_id["none"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id["none"].error.message == "call: one of encode, decode or sample is required"
    long_id = by_id[""]  # not echoed: cut short, it could be another request's
    assert long_id.error.message == "id: at most 256 characters, got 257"
    assert from_tensor(by_id["d"].decode.x, "x").shape == (2, 784)


def test_an_answer_over_the_message_limit_is_refused_alone():
    """100 decoded rows fit the message limit by 36 bytes: unary, they are answered; on a stream,
    with a long id around them, they would not fit: that request is refused, not the stream."""
    rows = 100
    server = RunningServer(max_message_bytes=4 * 784 * rows + 100)
    try:
        z = np.zeros((rows, L), np.float32)
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            assert stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(z)), timeout=30).x.shape == [rows, 784]
            answers = _native(
                channel,
                [
                    vae_pb2.StreamRequest(id="i" * 200, decode=vae_pb2.DecodeRequest(z=to_tensor(z))),
                    vae_pb2.StreamRequest(id="small", decode=vae_pb2.DecodeRequest(z=to_tensor(z[:1]))),
                ],
            )
    finally:
        server.stop()
    by_id = {answer.id: answer for answer in answers}
    assert by_id["i" * 200].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "over the" in by_id["i" * 200].error.message
    assert by_id["small"].decode.x.shape == [1, 784]
