"""Log lines of a failed request carry its request id, in either format; the access log writes one
line per call, only when asked to."""

import asyncio
import io
import json
import logging

import grpc
import numpy as np
import pytest
from support import DEFAULT_VERSION

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.server.cli import log_handler
from vae_serve.server.protocol.calls import request_id
from vae_serve.server.runners.batching import BatchingRunner
from vae_serve.server.runners.runner import TimedGraph
from vae_serve.server.settings import BatchingSettings, LogSettings
from vae_serve.server.telemetry import observe
from vae_serve.server.telemetry.metrics import Metrics
from vae_serve.tensor import to_tensor


@pytest.fixture
def json_lines():
    """What the server's loggers write in `--log-format json` during the test, parsed."""
    stream = io.StringIO()
    handler = log_handler(LogSettings(log_format="json"), stream)
    logger = logging.getLogger("vae_serve")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def access_log():
    observe.set_access_log(True)
    yield
    observe.set_access_log(False)


def test_an_internal_error_line_is_json_with_the_request_id(running, stub, monkeypatch, json_lines):
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the decoder fell over")

    monkeypatch.setattr(running.server.dataplane, "decode", broken)
    z = to_tensor(np.zeros((1, 32), np.float32))
    with pytest.raises(grpc.RpcError):
        stub.Decode(vae_pb2.DecodeRequest(z=z), metadata=(("x-request-id", "json-boom"),), timeout=5)
    (line,) = [r for r in json_lines() if r["message"] == "Decode failed"]
    assert line["request_id"] == "json-boom" and line["level"] == "ERROR"
    assert "fell over" in line["exc_info"] and {"timestamp", "logger", "process"} <= set(line)


class _Broken:
    provider = "CPUExecutionProvider"

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        raise RuntimeError("ORT fell over")


def test_a_failed_batch_names_every_request_it_served(caplog):
    metrics = Metrics()
    waits = BatchingSettings(queue_delay_policy="fixed", max_queue_delay_us=200_000)
    runner = BatchingRunner(TimedGraph(_Broken(), "decoder", metrics, "1"), metrics, waits)

    async def call(rid: str) -> None:
        request_id.set(rid)
        with pytest.raises(RuntimeError):
            await runner.run(np.zeros((1, 32), np.float32))

    async def both() -> None:
        await asyncio.gather(call("first-1"), call("second-2"))

    with caplog.at_level(logging.ERROR, logger="vae_serve.server"):
        try:
            asyncio.run(both())
        finally:
            runner.close()
    (record,) = [r for r in caplog.records if "batch of 2 rows failed" in r.getMessage()]
    assert "first-1" in record.getMessage() and "second-2" in record.getMessage()


def test_the_access_log_writes_one_line_per_call_only_when_on(running, stub, json_lines, access_log):
    z = to_tensor(np.zeros((5, 32), np.float32))
    stub.Decode(vae_pb2.DecodeRequest(z=z), metadata=(("x-request-id", "acc-1"),), timeout=5)
    stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), metadata=(("x-request-id", "acc-2"),), timeout=5)
    observe.set_access_log(False)
    stub.Decode(vae_pb2.DecodeRequest(z=z), metadata=(("x-request-id", "acc-3"),), timeout=5)
    lines = [r for r in json_lines() if r["logger"] == "vae_serve.access"]
    assert [r["request_id"] for r in lines] == ["acc-1", "acc-2"]
    decode = lines[0]
    assert (decode["method"], decode["model"], decode["version"], decode["rows"]) == (
        "Decode",
        "fashion-vae",
        DEFAULT_VERSION,
        5,
    )
    assert decode["status"] == "OK" and decode["duration_ms"] > 0 and decode["peer"].startswith("ipv")
    assert "trace_id" not in decode  # tracing is off
    assert lines[1]["method"] == "GetModelInfo" and lines[1]["rows"] == 0
