"""ModelStreamInfer as an attacker would use it: a client that sends and never reads its answers
is stopped being read, and nothing it sent is lost once it reads again."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
from support import wait_for

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve.server.grpc.stream import MAX_IN_FLIGHT

L = 32
ROWS = 64  # an answer of 64 decoded rows is about 200 KB
SENT = 1000


def answered(running) -> float:
    """Stream requests answered so far, whatever their status or other labels."""
    family = running.server.metrics.requests
    return sum(
        sample.value
        for metric in family.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("method") == "ModelStreamInfer"
    )


def requests(sent: list[int]) -> Iterator[oip.ModelInferRequest]:
    z = np.random.default_rng(0).standard_normal((ROWS, L), dtype=np.float32).tobytes()
    for i in range(SENT):
        request = oip.ModelInferRequest(model_name="vae_decoder", id=str(i), raw_input_contents=[z])
        request.inputs.add(name="z", datatype="FP32", shape=[ROWS, L])
        sent.append(i)
        yield request


def test_a_stream_whose_answers_are_not_read_stops_being_read(running):
    before = answered(running)
    sent: list[int] = []
    with grpc.insecure_channel(running.target) as channel:
        answers = oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(sent))
        # The first answers are computed, then the stream waits for its client to read them.
        wait_for(lambda: answered(running) - before >= MAX_IN_FLIGHT, "the first requests answered")
        with grpc.insecure_channel(running.target) as other:
            decode = oip_grpc.GRPCInferenceServiceStub(other).ModelInfer
            for _ in range(100):  # everyone else is served meanwhile
                one = oip.ModelInferRequest(model_name="vae_decoder", raw_input_contents=[bytes(4 * L)])
                one.inputs.add(name="z", datatype="FP32", shape=[1, L])
                assert len(decode(one, timeout=30).raw_output_contents[0]) == 4 * 784
        held = answered(running) - before
        assert held < SENT / 2, f"{held} of the unread stream's requests were computed"
        assert len(sent) < SENT, "the client could send every request: nothing held it"
        # Read now: every request is answered, in full.
        ids = set()
        for answer in answers:
            assert answer.error_message == ""
            assert len(answer.infer_response.raw_output_contents[0]) == 4 * ROWS * 784
            ids.add(answer.infer_response.id)
            if len(ids) == SENT:
                break
        answers.cancel()
    assert ids == {str(i) for i in range(SENT)}


def test_a_stream_ends_when_its_client_ends_it(running):
    """Half-closing after the last request: every answer comes, then the call ends OK."""
    z = np.zeros((1, L), np.float32).tobytes()

    def three() -> Iterator[oip.ModelInferRequest]:
        for i in range(3):
            request = oip.ModelInferRequest(model_name="vae_decoder", id=f"r{i}", raw_input_contents=[z])
            request.inputs.add(name="z", datatype="FP32", shape=[1, L])
            yield request

    with grpc.insecure_channel(running.target) as channel:
        call = oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(three(), timeout=30)
        got = sorted(answer.infer_response.id for answer in call)
        assert got == ["r0", "r1", "r2"]
        assert call.code() is grpc.StatusCode.OK


def test_an_unreadable_message_is_answered_on_the_stream(running):
    """Bytes that are no ModelInferRequest: an error answer, and the stream goes on."""
    good = oip.ModelInferRequest(model_name="vae_decoder", id="ok", raw_input_contents=[bytes(4 * L)])
    good.inputs.add(name="z", datatype="FP32", shape=[1, L])
    with grpc.insecure_channel(running.target) as channel:
        raw = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda message: message,
            response_deserializer=oip.ModelStreamInferResponse.FromString,
        )
        answers = list(raw(iter([b"\xff\xff\xff", good.SerializeToString()]), timeout=30))
    errors = [a.error_message for a in answers if a.error_message]
    assert len(errors) == 1 and "request is not a valid inference.ModelInferRequest" in errors[0]
    assert [a.infer_response.id for a in answers if not a.error_message] == ["ok"]


def test_streams_on_one_channel_are_served_side_by_side(running):
    """Several streams at once, each answered in full."""
    results: dict[int, set[str]] = {}

    def one_stream(n: int) -> None:
        z = np.zeros((2, L), np.float32).tobytes()

        def messages() -> Iterator[oip.ModelInferRequest]:
            for i in range(50):
                request = oip.ModelInferRequest(
                    model_name="vae_decoder", id=f"{n}-{i}", raw_input_contents=[z]
                )
                request.inputs.add(name="z", datatype="FP32", shape=[2, L])
                yield request

        call = stub.ModelStreamInfer(messages(), timeout=60)
        results[n] = {answer.infer_response.id for answer in call}

    with grpc.insecure_channel(running.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        threads = [threading.Thread(target=one_stream, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert results == {n: {f"{n}-{i}" for i in range(50)} for n in range(4)}
