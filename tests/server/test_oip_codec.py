"""The OIP rules on requests the gRPC codec decodes, its own rules, and readiness that follows the
server's state. (tests/server/test_oip_transports.py sends the same cases over gRPC and REST.)"""

import grpc
import numpy as np
import pytest
from support import RunningServer

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve.errors import InvalidInput
from vae_serve.server.grpc.oip_codec import infer_request, infer_response
from vae_serve.server.protocol.oip_checks import MAX_ID_CHARS, check_id, input_array, wanted_outputs
from vae_serve.server.protocol.oip_messages import InferResponse

MAX = 1 << 20  # values a request may carry, in these tests


def request(shape, raw=None, fp32=None, datatype="FP32", name="z", extra_raw=0):
    tensor = oip.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if fp32 is not None:
        tensor.contents.fp32_contents.extend(fp32)
    req = oip.ModelInferRequest(model_name="vae_decoder", inputs=[tensor])
    if raw is not None:
        req.raw_input_contents.extend([raw] + [b""] * extra_raw)
    return req


def array_of(req: oip.ModelInferRequest) -> np.ndarray:
    return input_array(infer_request(req), "vae_decoder", "z", MAX)


def test_raw_and_typed_inputs_give_the_same_array():
    z = np.arange(6, dtype=np.float32).reshape(2, 3)
    from_raw = array_of(request([2, 3], raw=z.tobytes()))
    from_typed = array_of(request([2, 3], fp32=z.ravel().tolist()))
    np.testing.assert_array_equal(from_raw, z)
    np.testing.assert_array_equal(from_typed, z)


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request([2, 3], raw=b"\0" * 20), "20 bytes, but FP32 shape [2, 3] needs 24"),
        (request([2, 3], fp32=[1.0] * 5), "5 values, but shape [2, 3] needs 6"),
        (request([2, 3], raw=b"\0" * 24, extra_raw=1), "raw_input_contents has 2 entries for 1 input"),
        (request([2, 3], datatype="INT8", raw=b"\0" * 6), "datatype 'INT8' is not supported"),
        (request([-2, 3], raw=b""), "is not a valid tensor shape"),
        (request([1] * 3, raw=b"\0" * 4), "shape must be [rows, columns], got rank 3"),
        (request([2, 3], name="x", raw=b"\0" * 24), "takes one input 'z', got 'x'"),
        (request([2, 3], datatype="X" * 10_000, raw=b""), "datatype 'XXXX"),
        (request([2, 3], name="n" * 10_000, raw=b""), "(10000 characters)"),
        (request([4096, 784], raw=b""), "holds 3211264 values, over the 1048576 a request may carry"),
    ],
)
def test_bad_inputs_name_the_rule(req, message):
    with pytest.raises(InvalidInput) as caught:
        array_of(req)
    assert message in str(caught.value)


def test_typed_contents_of_another_type_are_refused():
    req = request([1, 2])
    req.inputs[0].contents.int_contents.extend([1, 2])
    with pytest.raises(InvalidInput, match="FP32 data belongs in fp32_contents, not int_contents"):
        array_of(req)


def test_response_has_requested_outputs_in_order_as_raw_bytes():
    req = oip.ModelInferRequest(model_name="m", id="abc")
    req.outputs.add(name="logvar")
    req.outputs.add(name="mean")
    wanted = wanted_outputs(infer_request(req), "m", ("mean", "logvar"))
    assert wanted == ["logvar", "mean"]
    computed = {"mean": np.zeros((1, 2), np.float32), "logvar": np.ones((1, 2), np.float32)}
    reply = infer_response(
        InferResponse("m", "3", req.id, {name: computed[name] for name in wanted}), oip.ModelInferResponse()
    )
    assert (reply.id, reply.model_version) == ("abc", "3")
    assert [o.name for o in reply.outputs] == ["logvar", "mean"]
    assert reply.raw_output_contents[0] == np.ones((1, 2), "<f4").tobytes()


def test_readiness_follows_draining():
    running = RunningServer()
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
            assert stub.ModelReady(oip.ModelReadyRequest(name="vae_encoder"), timeout=5).ready
            running.call(running.server.state.drain())
            assert not stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
            assert not stub.ModelReady(oip.ModelReadyRequest(name="vae_encoder"), timeout=5).ready
            assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
    finally:
        running.stop()


def test_raw_and_typed_together_are_refused():
    req = request([1, 2], raw=b"\0" * 8, fp32=[0.0, 0.0])
    with pytest.raises(InvalidInput, match="raw_input_contents or contents, not both"):
        infer_request(req)


def test_an_output_asked_twice_is_refused():
    req = oip.ModelInferRequest(model_name="m")
    req.outputs.add(name="x")
    req.outputs.add(name="x")
    with pytest.raises(InvalidInput, match="requested more than once"):
        wanted_outputs(infer_request(req), "m", ("x",))


@pytest.mark.parametrize(
    ("field", "message"),
    [("name", "(10000 characters)"), ("id", f"over the {MAX_ID_CHARS} echoed back")],
)
def test_unbounded_strings_are_never_echoed_whole(field, message):
    req = oip.ModelInferRequest(model_name="m")
    if field == "id":
        req.id = "i" * 10_000
    else:
        req.outputs.add(name="o" * 10_000)

    def check() -> None:
        check_id(req.id)
        wanted_outputs(infer_request(req), "m", ("x",))

    with pytest.raises(InvalidInput) as caught:
        check()
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300


def test_a_shape_of_millions_of_entries_is_refused_by_its_length():
    req = request([1] * 2_000_000, raw=b"")
    with pytest.raises(InvalidInput) as caught:
        array_of(req)
    assert str(caught.value) == "input 'z': shape must be [rows, columns], got rank 2000000"


def test_typed_contents_convert_exactly_without_a_python_loop():
    values = np.random.default_rng(0).standard_normal(784 * 64).astype(np.float32)
    values[:3] = [np.inf, -0.0, np.nan]
    req = request([64, 784], fp32=values)
    got = array_of(req)
    assert got.shape == (64, 784)
    np.testing.assert_array_equal(got.view(np.uint32).ravel(), values.view(np.uint32))  # bit-exact
