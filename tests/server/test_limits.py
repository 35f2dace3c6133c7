"""Limits hold on every path: decoded samples count as rows, the queue bound holds with batching
off, the limits are consistent with each other at start, and messages fit the API's own replies."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from support import (
    DEFAULT_MODEL_DIR,
    DEFAULT_VERSION,
    GOOD_DECODER,
    GOOD_ENCODER,
    RunningServer,
    wait_for,
    write_version,
)

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.errors import DeadlineExceeded, InvalidInput, ModelLoadError, Overloaded
from vae_serve.server.models.model import load_model
from vae_serve.server.models.repository import resolve
from vae_serve.server.protocol import dataplane
from vae_serve.server.protocol.dataplane import DataPlane, message_floor
from vae_serve.server.runners.runner import INLINE_MAX_ROWS, InlineRunner, MemoryTrimmer, TimedGraph
from vae_serve.server.settings import (
    MIN_MESSAGE_BYTES,
    BatchingSettings,
    LimitSettings,
    RepositorySettings,
    Settings,
    ValidationError,
    describe_error,
)
from vae_serve.server.telemetry.metrics import Metrics
from vae_serve.tensor import to_tensor

L, D = 32, 784


@pytest.fixture(scope="module")
def model():
    return load_model(resolve(DEFAULT_MODEL_DIR.parent.parent, "fashion-vae"), "cpu", 1)


def plane_for(model, **limits: int) -> DataPlane:
    """The groups alone, not `Settings`: some cases hold limits the settings would refuse together,
    to show the data plane's own checks."""
    batching = BatchingSettings(**{k: v for k, v in limits.items() if k in BatchingSettings.model_fields})
    rest = {k: v for k, v in limits.items() if k not in BatchingSettings.model_fields}
    plane = DataPlane(batching, LimitSettings(**rest), RepositorySettings(), Metrics())
    plane.serve(model)
    return plane


def count(metrics: Metrics, name: str, **labels: str) -> float:
    """The samples of `name` with these labels, summed over the others (the model's, say)."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


# 1. A prior Sample is K rows: the row limit holds for it, before any work.


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("decode", [True, False])
def test_prior_samples_over_the_row_limit_are_invalid_not_computed(model, batch, decode):
    plane = plane_for(model, max_batch_size=batch, max_request_rows=256, max_queue_rows=256, max_samples=4096)
    try:
        with pytest.raises(InvalidInput, match="num_samples: 4096 samples exceed the limit of 256 rows"):
            asyncio.run(plane.sample(4096, seed=0, decode=decode))
        assert (
            count(plane.metrics, "vae_serve_batch_size_rows_count", graph="decoder", version=DEFAULT_VERSION)
            == 0
        )
        assert count(plane.metrics, "vae_serve_rejected_total", graph="decoder", reason="queue_full") == 0
        z, x, _ = asyncio.run(plane.sample(256, seed=0, decode=decode))  # at the limit: served
        assert z.shape == (256, L) and (x is None or x.shape == (256, D))
    finally:
        plane.close()


def test_a_lower_row_limit_lowers_the_default_sample_limit_and_it_is_reported():
    server = RunningServer(max_request_rows=256, max_queue_rows=256)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            assert stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10).limits.max_samples == 256
            with pytest.raises(grpc.RpcError) as caught:
                stub.Sample(vae_pb2.SampleRequest(num_samples=4096, decode=True), timeout=10)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "between 1 and 256, got 4096" in caught.value.details()
            reply = stub.Sample(vae_pb2.SampleRequest(num_samples=256, decode=True), timeout=10)
            assert list(reply.x.shape) == [256, D]
    finally:
        server.stop()


def parse(*args: str) -> Settings:
    from pydantic_settings import CliApp

    return CliApp.run(Settings, cli_args=list(args))


def refusal(*args: str) -> str:
    with pytest.raises(ValidationError) as caught:
        parse(*args)
    line = describe_error(caught.value)
    assert "\n" not in line
    return line


def test_an_explicit_sample_limit_above_the_row_limit_is_refused_at_start(monkeypatch):
    line = refusal("--max-samples", "4096", "--max-request-rows", "256")
    assert "--max-samples 4096 exceeds --max-request-rows 256" in line
    monkeypatch.setenv("VAE_MAX_SAMPLES", "300")  # set in the environment: just as explicit
    assert "--max-samples 300 exceeds --max-request-rows 256" in refusal("--max-request-rows", "256")


def test_default_limits_are_valid_and_unchanged():
    s = parse()
    assert (s.max_samples, s.max_request_rows, s.max_queue_rows) == (4096, 8192, 16384)
    assert (s.max_batch_size, s.max_message_bytes) == (64, 32 << 20)


@hsettings(max_examples=200, deadline=None)
@given(
    st.integers(1, 20_000),
    st.integers(1, 20_000),
    st.integers(1, 20_000),
    st.integers(1, 20_000),
    st.booleans(),
)
def test_every_accepted_combination_admits_its_largest_requests(samples, rows, queue, batch, explicit):
    """Whatever start accepts, the largest Sample, request and batch fit the queue and each other."""
    args = {"max_request_rows": rows, "max_queue_rows": queue, "max_batch_size": batch}
    try:
        s = Settings(**args, **({"max_samples": samples} if explicit else {}))
    except ValidationError:
        return
    assert s.max_samples <= s.max_request_rows <= s.max_queue_rows
    assert s.max_batch_size <= s.max_queue_rows


# 2. With batching off the queue bound still holds.


def test_unbatched_requests_are_admitted_against_the_queue_bound_and_shed_at_once(model):
    metrics = Metrics()
    rows = INLINE_MAX_ROWS + 1  # runs on the worker thread: the request stays in flight a while
    graph = TimedGraph(model.decoder, "decoder", metrics, model.version)
    runner = InlineRunner(graph, metrics, BatchingSettings(max_queue_rows=2 * rows))
    z = np.zeros((rows, L), np.float32)

    async def flood():
        try:
            return await asyncio.gather(*(runner.run(z) for _ in range(10)), return_exceptions=True)
        finally:
            runner.close()

    results = asyncio.run(flood())
    shed = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, list)]
    assert (len(served), len(shed)) == (2, 8)  # all ten arrive before the first one finishes
    assert f"decoder queue full ({2 * rows} rows waiting, limit {2 * rows})" in str(shed[0])
    assert count(metrics, "vae_serve_rejected_total", graph="decoder", reason="queue_full") == 8
    assert runner.admission.rows == 0
    assert count(metrics, "vae_serve_queue_rows", graph="decoder") == 0


@pytest.mark.parametrize("rows", [1, INLINE_MAX_ROWS + 1])  # on the loop, and on the worker thread
def test_unbatched_rows_are_released_when_the_run_fails(model, monkeypatch, rows):
    metrics = Metrics()
    graph = TimedGraph(model.decoder, "decoder", metrics, model.version)
    runner = InlineRunner(graph, metrics, BatchingSettings(max_queue_rows=rows))

    def broken(x):
        raise RuntimeError("ORT exploded")

    monkeypatch.setattr(runner.graph.graph, "run", broken)

    async def twice():
        try:
            for _ in range(2):  # the second would be shed if the first's rows were still counted
                with pytest.raises(RuntimeError, match="exploded"):
                    await runner.run(np.zeros((rows, L), np.float32))
        finally:
            runner.close()

    asyncio.run(twice())
    assert runner.admission.rows == 0


def test_unbatched_late_requests_are_counted_and_not_computed(model):
    metrics = Metrics()
    graph = TimedGraph(model.decoder, "decoder", metrics, model.version)
    runner = InlineRunner(graph, metrics, BatchingSettings(max_queue_rows=64))
    with pytest.raises(DeadlineExceeded, match="not computed"):
        asyncio.run(runner.run(np.zeros((1, L), np.float32), deadline=time.monotonic() - 1))
    runner.close()
    assert count(metrics, "vae_serve_rejected_total", graph="decoder", reason="deadline") == 1
    assert count(metrics, "vae_serve_batch_size_rows_count", graph="decoder", version=DEFAULT_VERSION) == 0


def test_the_data_plane_gives_the_unbatched_runners_the_queue_bound(model):
    plane = plane_for(model, max_batch_size=1, max_queue_rows=300, max_request_rows=300, max_samples=300)
    try:
        for runner in (plane.current().encoder.runner, plane.current().decoder.runner):
            assert isinstance(runner, InlineRunner) and runner.admission.max_rows == 300
    finally:
        plane.close()


# 3. Messages fit what the API itself sends.


@pytest.mark.parametrize("value", [1024, MIN_MESSAGE_BYTES - 1])
def test_a_message_limit_under_the_apis_own_needs_is_refused_at_start(value):
    line = refusal("--max-message-bytes", str(value))
    assert f"--max-message-bytes {value} is under" in line
    assert f"{MIN_MESSAGE_BYTES}-byte minimum" in line
    assert parse("--max-message-bytes", str(MIN_MESSAGE_BYTES)).max_message_bytes == MIN_MESSAGE_BYTES


@pytest.fixture
def big_card_repository(tmp_path):
    """A model whose card alone (100 kB of notes) is larger than the static minimum."""
    version = write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER)
    card_path = version.path / "model.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "notes": "n" * 100_000}))
    return tmp_path


def test_a_model_whose_replies_do_not_fit_is_refused_when_it_loads(big_card_repository):
    model = load_model(resolve(big_card_repository, "m"), "cpu", 1)
    floor = message_floor(model)
    assert floor > 100_000
    s = Settings(max_message_bytes=floor - 1)
    plane = DataPlane(s.batching, s.limits, s.repository, Metrics())
    with pytest.raises(ModelLoadError, match=rf"--max-message-bytes {floor - 1} is under the {floor} bytes"):
        plane.serve(model)
    assert not plane.loaded
    with pytest.raises(ModelLoadError, match="is under the"):  # at start: one line, before any port opens
        RunningServer(model_repository=big_card_repository, model="m", max_message_bytes=floor - 1)


def test_at_the_floor_every_reply_of_one_row_fits(big_card_repository, model):
    for root, name, served in (
        (big_card_repository, "m", None),
        (DEFAULT_MODEL_DIR.parent.parent, "fashion-vae", model),
    ):
        served = served or load_model(resolve(root, name), "cpu", 1)
        limit = max(message_floor(served), MIN_MESSAGE_BYTES)
        server = RunningServer(model_repository=root, model=name, max_message_bytes=limit)
        try:
            options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
            with grpc.insecure_channel(server.target, options=options) as channel:
                stub = vae_pb2_grpc.VAEServiceStub(channel)
                info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
                assert info.ByteSize() <= limit and info.limits.max_message_bytes == limit
                x = np.full((1, served.input_dim), 0.5, np.float32)
                assert stub.Encode(vae_pb2.EncodeRequest(x=to_tensor(x)), timeout=10).mean.shape[0] == 1
                z = np.zeros((1, served.latent_dim), np.float32)
                assert stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(z)), timeout=10).x.shape[0] == 1
                reply = stub.Sample(vae_pb2.SampleRequest(num_samples=1, decode=True), timeout=10)
                assert list(reply.x.shape) == [1, served.input_dim]
        finally:
            server.stop()


# 4. Memory: large requests hand their memory back.


def test_trim_asks_coalesce_and_an_ask_during_a_trim_gets_one_more():
    calls, running, release = [], threading.Event(), threading.Event()

    def fake_trim(pad: int) -> int:
        calls.append(pad)
        running.set()
        release.wait(30)
        return 1

    trimmer = MemoryTrimmer(delay_s=0, trim=fake_trim)

    async def scenario():
        for _ in range(3):  # before the trim starts: all served by it
            trimmer.soon()
        await asyncio.to_thread(wait_for, running.is_set, "the trim to start")
        trimmer.soon()  # during it: its memory may be freed after, so one more follows
        release.set()
        await asyncio.to_thread(
            wait_for, lambda: trimmer.trims == 2 and not trimmer._pending, "two trims done"
        )

    asyncio.run(scenario())
    assert calls == [0, 0]


REFUSALS = [
    (8000, 16384, 8192, None, 1),
    (8000, 4000, 8192, Overloaded, 1),
    (8000, 16384, 4000, InvalidInput, 1),
    (1, 16384, 8192, None, 0),
]


@pytest.mark.parametrize(("rows", "queue", "row_limit", "refusal", "trims"), REFUSALS)
def test_requests_that_move_many_bytes_ask_for_a_trim_served_shed_or_refused(
    model, monkeypatch, rows, queue, row_limit, refusal, trims
):
    calls: list[int] = []
    recorder = MemoryTrimmer(delay_s=0, trim=lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(dataplane, "trimmer", recorder)
    plane = plane_for(model, max_queue_rows=queue, max_request_rows=row_limit, max_samples=1)

    async def one():
        x = np.full((rows, D), 0.5, np.float32)
        if refusal is None:
            await plane.encode(x)
        else:
            with pytest.raises(refusal):
                await plane.encode(x)
        await plane.decode(np.zeros((1, L), np.float32))  # small: asks for nothing
        await asyncio.to_thread(
            wait_for, lambda: len(calls) >= trims and not recorder._pending, f"{trims} trims done"
        )

    try:
        asyncio.run(one())
    finally:
        plane.close()
    assert len(calls) == trims
