"""The bounded look at wire bytes: big but plain messages pass, costly shapes are refused, and
no byte string makes it raise anything but WireLimitError."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.server.grpc.registration import Unreadable, _lenient
from vae_serve.server.grpc.wire import MAX_FIELDS, PRESCAN_BYTES, WireLimitError, check_wire
from vae_serve.tensor import to_tensor

DECODE = vae_pb2.DecodeRequest.DESCRIPTOR
INFER = oip.ModelInferRequest.DESCRIPTOR


def test_large_plain_messages_pass():
    big = vae_pb2.DecodeRequest(z=to_tensor(np.zeros((4096, 32), np.float32)), model_version="1")
    check_wire(big.SerializeToString(), DECODE)
    typed = oip.ModelInferRequest(model_name="vae_decoder")
    typed.inputs.add(name="z", datatype="FP32", shape=[4096, 32]).contents.fp32_contents.extend(
        [0.5] * 4096 * 32
    )
    typed.parameters["p"].string_param = "v"
    check_wire(typed.SerializeToString(), INFER)


def varint_shape(entries: int) -> bytes:
    tensor = vae_pb2.Tensor()
    tensor.shape.extend([1] * entries)
    return vae_pb2.DecodeRequest(z=tensor).SerializeToString()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (varint_shape(70_000), "bytes of packed varints"),
        (b"\x0a\xff\xff\x7f" + b"\x00" * PRESCAN_BYTES, "runs past the end"),
        (b"\x0b" * PRESCAN_BYTES, "wire type 3 is not accepted"),
        (b"\x10\x01" * PRESCAN_BYTES, f"more than {MAX_FIELDS} fields"),
        (b"\x10" + b"\xff" * PRESCAN_BYTES, "overlong varint"),
    ],
)
def test_costly_or_broken_shapes_are_refused(data, message):
    with pytest.raises(WireLimitError, match=message):
        check_wire(data, DECODE)


def test_nested_repeated_entries_count_toward_one_budget():
    request = oip.ModelInferRequest(model_name="m")
    for _ in range(5 * MAX_FIELDS):  # each entry and its name are one field each
        request.outputs.add(name="x")
    with pytest.raises(WireLimitError, match="repeated entries"):
        check_wire(request.SerializeToString(), INFER)


def test_small_messages_are_not_walked():
    check_wire(b"\x0b" * (PRESCAN_BYTES - 1), DECODE)  # left to the parser, which is cheap here


# raw_input_contents (field 7) of PRESCAN_BYTES: makes any message big enough to be walked
_PAD = b"\x3a" + bytes([0x80, 0x80, 0x04]) + b"\x00" * PRESCAN_BYTES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_give_a_message_or_unreadable(noise, noise_first):
    data = noise + _PAD if noise_first else _PAD + noise
    parsed = _lenient(oip.ModelInferRequest)(data)
    assert isinstance(parsed, oip.ModelInferRequest | Unreadable)
