"""Fuzzing both APIs with malformed requests: never UNKNOWN or INTERNAL, never a crash."""

from __future__ import annotations

import struct

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
EXAMPLES = 700  # per strategy; four strategies: 2800 malformed requests a run
# Every example begins with give_way(): a timed test waiting for the machine runs between two
# examples, not after the whole run of them.
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
dims = st.one_of(st.integers(-3, 40), st.sampled_from([0, 784, 32, 2**31 - 1, 2**31, 2**62]))
tensors = st.builds(
    vae_pb2.Tensor,
    shape=st.lists(dims, max_size=10),
    data=st.one_of(
        st.binary(max_size=4096),
        st.lists(floats, max_size=200).map(lambda xs: b"".join(struct.pack("<f", x) for x in xs)),
    ),
)
optional_tensors = st.one_of(st.none(), tensors)
versions = st.one_of(st.just(""), st.text(max_size=5))


def outcome(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def stubs(running):
    channel = grpc.insecure_channel(running.target, options=[("grpc.max_receive_message_length", 64 << 20)])
    yield channel, vae_pb2_grpc.VAEServiceStub(channel), oip_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # alive and well after all of it
    channel.close()


@FUZZ
@given(method=st.sampled_from(["Encode", "Decode"]), tensor=optional_tensors, version=versions)
def test_native_encode_decode(stubs, method, tensor, version, give_way):
    give_way()
    _, native, _ = stubs
    field = "x" if method == "Encode" else "z"
    cls = vae_pb2.EncodeRequest if method == "Encode" else vae_pb2.DecodeRequest
    request = cls(model_version=version, **({field: tensor} if tensor is not None else {}))
    assert outcome(getattr(native, method), request) not in FORBIDDEN


@FUZZ
@given(
    k=st.one_of(st.integers(0, 10), st.integers(0, 2**32 - 1)),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    mean=optional_tensors,
    logvar=optional_tensors,
    decode=st.booleans(),
)
@pytest.mark.slow
def test_native_sample(stubs, k, seed, mean, logvar, decode, give_way):
    give_way()
    _, native, _ = stubs
    fields = {name: t for name, t in (("mean", mean), ("logvar", logvar)) if t is not None}
    request = vae_pb2.SampleRequest(num_samples=k, seed=seed, decode=decode, **fields)
    assert outcome(native.Sample, request) not in FORBIDDEN


oip_inputs = st.builds(
    oip.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(["x", "z", "", "y"]),
    datatype=st.sampled_from(["FP32", "FP64", "INT8", "BYTES", ""]),
    shape=st.lists(dims, max_size=6),
    contents=st.builds(
        oip.InferTensorContents,
        fp32_contents=st.lists(floats, max_size=100),
        int_contents=st.lists(st.integers(-5, 5), max_size=3),
    ),
)


@FUZZ
@given(
    model=st.sampled_from(["vae_encoder", "vae_decoder", "", "other"]),
    version=versions,
    inputs=st.lists(oip_inputs, max_size=3),
    raw=st.lists(st.binary(max_size=4096), max_size=3),
    outputs=st.lists(st.sampled_from(["x", "mean", "logvar", "q"]), max_size=3),
)
@pytest.mark.slow
def test_oip_model_infer(stubs, model, version, inputs, raw, outputs, give_way):
    give_way()
    _, _, inference = stubs
    request = oip.ModelInferRequest(
        model_name=model, model_version=version, inputs=inputs, raw_input_contents=raw
    )
    for name in outputs:
        request.outputs.add(name=name)
    assert outcome(inference.ModelInfer, request) not in FORBIDDEN


@FUZZ
@given(
    path=st.sampled_from(
        [
            "/vae.v1.VAEService/Encode",
            "/vae.v1.VAEService/Decode",
            "/vae.v1.VAEService/Sample",
            "/vae.v1.VAEService/GetModelInfo",
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/ModelMetadata",
            "/inference.GRPCInferenceService/ModelReady",
        ]
    ),
    garbage=st.binary(max_size=2048),
)
def test_garbage_bytes_on_every_path(stubs, path, garbage, give_way):
    give_way()
    channel, _, _ = stubs
    assert outcome(channel.unary_unary(path), garbage) not in FORBIDDEN
