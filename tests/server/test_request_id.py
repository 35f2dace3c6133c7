"""Every call has a request id: the caller's x-request-id when plain, else made up; it comes back
in the reply's trailing metadata and is on every log line written inside the call."""

import logging
import os
import re

import grpc
import numpy as np
import pytest

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.server.cli import LOG_FORMAT
from vae_serve.server.protocol.calls import RequestIdFilter, request_id, request_id_from
from vae_serve.tensor import to_tensor

GENERATED = re.compile(r"[0-9a-f]{32}")


def _sent_back(call: grpc.Call) -> str:
    ids = [value for key, value in call.trailing_metadata() if key == "x-request-id"]
    assert len(ids) == 1, call.trailing_metadata()
    return ids[0]


@pytest.mark.parametrize("given", ["abc-123", "A.b_c:9-Z", "x" * 128])
def test_a_plain_id_is_kept(given):
    assert request_id_from([("other", "v"), ("x-request-id", given)]) == given


@pytest.mark.parametrize("given", ["", "x" * 129, "a b", "a/b", "ünï", "a\n", b"abc"])
def test_an_unusable_id_is_replaced_by_a_generated_one(given):
    assert GENERATED.fullmatch(request_id_from([("x-request-id", given)]))


def test_no_metadata_gets_a_generated_id_each_time():
    first, second = request_id_from(None), request_id_from([])
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second) and first != second


def test_the_callers_id_comes_back_on_success_and_on_failure(stub):
    _, call = stub.GetModelInfo.with_call(
        vae_pb2.GetModelInfoRequest(), metadata=(("x-request-id", "trace-1"),), timeout=5
    )
    assert _sent_back(call) == "trace-1"
    with pytest.raises(grpc.RpcError) as caught:  # INVALID_ARGUMENT: z is required
        stub.Decode(vae_pb2.DecodeRequest(), metadata=(("x-request-id", "trace-2"),), timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _sent_back(caught.value) == "trace-2"


def test_a_call_without_an_id_or_with_a_bad_one_gets_a_generated_one(stub):
    for metadata in ((), (("x-request-id", "y" * 200),)):
        _, call = stub.GetModelInfo.with_call(vae_pb2.GetModelInfoRequest(), metadata=metadata, timeout=5)
        assert GENERATED.fullmatch(_sent_back(call))


def test_the_oip_front_end_sends_the_id_back_too(channel):
    infer = oip_grpc.GRPCInferenceServiceStub(channel)
    _, call = infer.ServerReady.with_call(
        oip.ServerReadyRequest(), metadata=(("x-request-id", "oip-7"),), timeout=5
    )
    assert _sent_back(call) == "oip-7"


def test_an_internal_error_is_logged_with_the_request_id(running, stub, monkeypatch, caplog):
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the decoder fell over")

    monkeypatch.setattr(running.server.dataplane, "decode", broken)
    caplog.handler.addFilter(RequestIdFilter())  # as the cli's logging setup does for its handlers
    z = to_tensor(np.zeros((1, 32), np.float32))
    with caplog.at_level(logging.ERROR, logger="vae_serve.server"), pytest.raises(grpc.RpcError) as caught:
        stub.Decode(vae_pb2.DecodeRequest(z=z), metadata=(("x-request-id", "boom-42"),), timeout=5)
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert "fell over" not in caught.value.details()  # internals never leak
    assert _sent_back(caught.value) == "boom-42"
    failed = [r for r in caplog.records if r.getMessage() == "Decode failed"]
    assert [r.request_id for r in failed] == ["boom-42"]
    assert failed[0].exc_info is not None


def test_the_log_format_shows_the_id_inside_a_call_and_a_dash_outside():
    formatter, add_id = logging.Formatter(LOG_FORMAT), RequestIdFilter()

    def line() -> str:
        record = logging.LogRecord("vae_serve.server.x", logging.INFO, __file__, 1, "hello", None, None)
        add_id.filter(record)
        return formatter.format(record)

    assert f"INFO [-] [{os.getpid()}] vae_serve.server.x: hello" in line()
    token = request_id.set("req-9")
    try:
        assert f"INFO [req-9] [{os.getpid()}] vae_serve.server.x: hello" in line()
    finally:
        request_id.reset(token)
    assert "[-]" in line()
