"""The dynamic batcher on the real default model: merging, exactness, isolation, shedding, deadlines."""

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import DEFAULT_MODEL_DIR, DEFAULT_VERSION

from vae_serve.errors import DeadlineExceeded, Draining, Overloaded
from vae_serve.server.models.model import load_model
from vae_serve.server.models.repository import resolve
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.runners.batching import MEMORY_DELAYS, BatchingRunner, RecentMax
from vae_serve.server.runners.runner import INLINE_MAX_ROWS, InlineRunner, TimedGraph
from vae_serve.server.settings import BatchingSettings, Settings
from vae_serve.server.telemetry.metrics import Metrics

L = 32


@pytest.fixture(scope="module")
def model():
    return load_model(resolve(DEFAULT_MODEL_DIR.parent.parent, "fashion-vae"), "cpu", 1)


def decoder_batcher(model, metrics=None, **kw):
    metrics = metrics or Metrics()
    options = {"max_batch_size": 64, "max_queue_delay_us": 0, "max_queue_rows": 4096, **kw}
    graph = TimedGraph(model.decoder, "decoder", metrics, model.version)
    return BatchingRunner(graph, metrics, BatchingSettings(**options)), metrics


@pytest.fixture
def batcher(model):
    """Make decoder batchers for a test; each is closed when the test ends."""
    made: list[BatchingRunner] = []

    def make(**kw):
        runner, metrics = decoder_batcher(model, **kw)
        made.append(runner)
        return runner, metrics

    yield make
    for runner in made:
        runner.close()


def count(metrics, name, **labels):
    """The samples of `name` with these labels, summed over the others (the model's, say)."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def latents(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, L), dtype=np.float32)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=60))
def test_every_caller_gets_exactly_its_own_rows(model, sizes):
    runner, _ = decoder_batcher(model, max_batch_size=32)  # hypothesis: one per example
    inputs = [latents(n, seed) for seed, n in enumerate(sizes)]

    async def all_at_once():
        try:
            return await asyncio.gather(*(runner.run(z) for z in inputs))
        finally:
            runner.close()

    results = asyncio.run(all_at_once())
    for z, (x,) in zip(inputs, results, strict=True):
        (alone,) = model.decoder.run(z)
        assert x.shape == (len(z), 784)
        np.testing.assert_allclose(x, alone, atol=1e-6, rtol=0)  # other kernels may run at other batch sizes


def test_concurrent_requests_are_merged(model, batcher):
    runner, metrics = batcher()

    async def burst():
        await asyncio.gather(*(runner.run(latents(1, i)) for i in range(200)))

    asyncio.run(burst())
    runs = count(metrics, "vae_serve_batch_size_rows_count", graph="decoder", version=DEFAULT_VERSION)
    assert count(metrics, "vae_serve_batch_size_rows_sum", graph="decoder", version=DEFAULT_VERSION) == 200
    assert runs <= 200 / 8  # 200 concurrent single rows took at most 25 runs, not 200
    assert (
        count(metrics, "vae_serve_queue_duration_seconds_count", graph="decoder", version=DEFAULT_VERSION)
        == 200
    )


def test_a_full_queue_sheds_at_once(model, batcher):
    runner, metrics = batcher(max_batch_size=4, max_queue_rows=8)

    async def flood():
        return await asyncio.gather(*(runner.run(latents(2, i)) for i in range(40)), return_exceptions=True)

    results = asyncio.run(flood())
    shed = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, list)]
    assert shed and served and len(shed) + len(served) == 40
    assert "queue full (8 rows waiting, limit 8)" in str(shed[0])
    assert count(metrics, "vae_serve_rejected_total", graph="decoder", reason="queue_full") == len(shed)


def test_expired_requests_are_dropped_not_computed(model, batcher):
    runner, metrics = batcher()

    async def late():
        with pytest.raises(DeadlineExceeded, match="not computed"):
            await runner.run(latents(3, 0), deadline=time.monotonic() - 0.001)
        (x,) = await runner.run(latents(3, 1), deadline=time.monotonic() + 10)
        return x

    assert asyncio.run(late()).shape == (3, 784)
    assert (
        count(metrics, "vae_serve_batch_size_rows_sum", graph="decoder", version=DEFAULT_VERSION) == 3
    )  # only the live one ran
    assert count(metrics, "vae_serve_rejected_total", graph="decoder", reason="deadline") == 1


async def done_without_waiting(*requests) -> bool:
    """Whether these calls finish within a few turns of the event loop: a batch that leaves at
    once does (small batches run on the loop itself), one that waits for company does not. The
    delay is long (1 s) and the turns are microseconds, so no clock bound is involved."""
    tasks = [asyncio.ensure_future(request) for request in requests]
    for _ in range(20):
        await asyncio.sleep(0)
    finished = all(task.done() for task in tasks)
    await asyncio.gather(*tasks)
    return finished


def test_queue_delay_waits_only_for_company_that_is_likely_to_come(model, batcher):
    runner, _ = batcher(max_batch_size=8, max_queue_delay_us=1_000_000)

    async def scenario():
        lone = await done_without_waiting(runner.run(latents(1, 0)))  # nothing suggests company
        await asyncio.gather(*(runner.run(latents(1, i)) for i in range(4)))  # four are expected next
        deserted = await done_without_waiting(runner.run(latents(1, 5)))  # waits for three more
        full = await done_without_waiting(*(runner.run(latents(1, i)) for i in range(8)))
        return lone, deserted, full

    assert asyncio.run(scenario()) == (True, False, True)


def test_a_smaller_batch_does_not_lower_the_company_waited_for(model, batcher):
    """Under Poisson arrivals a batch that got less company than usual must not make the next one
    leave with as little: the wait remembers the largest batch of the last MEMORY_DELAYS delays."""
    runner, metrics = batcher(max_batch_size=8, max_queue_delay_us=200_000)  # remembers 2 s

    async def scenario():
        await asyncio.gather(*(runner.run(latents(1, i)) for i in range(4)))  # a batch of four
        await asyncio.gather(*(runner.run(latents(1, i)) for i in range(2)))  # two: waits out the delay
        return await done_without_waiting(*(runner.run(latents(1, i)) for i in range(2)))

    assert asyncio.run(scenario()) is False  # two again: still waiting for four
    assert count(metrics, "vae_serve_batch_size_rows_count", graph="decoder", version=DEFAULT_VERSION) == 3


def test_recent_max_is_the_largest_value_within_its_span():
    recent = RecentMax(span=1.0)
    assert recent.get(now=0.0) == 1  # nothing noted: a lone request expects no company
    recent.note(4, now=0.0)
    recent.note(2, now=0.5)
    assert recent.get(now=0.9) == 4
    assert recent.get(now=1.2) == 2  # the 4 is older than the span
    recent.note(3, now=1.3)
    recent.note(2, now=1.4)
    assert recent.get(now=1.45) == 3
    assert recent.get(now=2.35) == 2  # the 3 is gone, the 2 after it not yet
    assert recent.get(now=9.0) == 1  # all gone
    assert MEMORY_DELAYS >= 1


def test_a_deserted_partial_batch_leaves_after_the_queue_delay(model, batcher):
    runner, metrics = batcher(max_batch_size=8, max_queue_delay_us=300_000)

    async def scenario():
        await asyncio.gather(*(runner.run(latents(1, i)) for i in range(4)))
        began = time.monotonic()
        await runner.run(latents(1, 5))
        return time.monotonic() - began

    assert asyncio.run(scenario()) >= 0.29  # a lower bound: a loaded machine only makes it longer
    assert count(metrics, "vae_serve_batch_size_rows_count", graph="decoder", version=DEFAULT_VERSION) == 2


def test_requests_above_the_batch_size_run_alone(model, batcher):
    runner, metrics = batcher(max_batch_size=16)

    async def big():
        return await runner.run(latents(100, 0))

    (x,) = asyncio.run(big())
    np.testing.assert_allclose(x, model.decoder.run(latents(100, 0))[0], atol=1e-6)
    assert count(metrics, "vae_serve_batch_size_rows_sum", graph="decoder", version=DEFAULT_VERSION) == 100
    assert (
        count(metrics, "vae_serve_queue_duration_seconds_count", graph="decoder", version=DEFAULT_VERSION)
        == 0
    )


@pytest.mark.parametrize(("max_batch_size", "kind"), [(1, InlineRunner), (2, BatchingRunner)])
def test_batch_size_one_takes_the_inline_path(model, max_batch_size, kind):
    s = Settings(max_batch_size=max_batch_size)
    plane = DataPlane(s.batching, s.limits, s.repository, Metrics())
    plane.serve(model)
    try:
        assert isinstance(plane.current().encoder.runner, kind)
        assert isinstance(plane.current().decoder.runner, kind)
    finally:
        plane.close()


def test_a_full_batch_leaves_without_waiting_even_when_more_company_is_expected(model, batcher):
    runner, _ = batcher(max_batch_size=8, max_queue_delay_us=1_000_000)

    async def scenario():
        await asyncio.gather(*(runner.run(latents(1, i)) for i in range(4)))  # expect 4 next time
        return await done_without_waiting(runner.run(latents(8, 9)))  # one request fills the batch

    assert asyncio.run(scenario())


def test_encoder_batches_match_unbatched_runs(model):
    metrics = Metrics()
    settings = BatchingSettings(max_batch_size=64, max_queue_delay_us=2000, max_queue_rows=4096)
    runner = BatchingRunner(TimedGraph(model.encoder, "encoder", metrics, model.version), metrics, settings)
    x = [np.random.default_rng(i).random((2, 784), dtype=np.float32) for i in range(30)]

    async def burst():
        return await asyncio.gather(*(runner.run(rows) for rows in x))

    for rows, (mean, logvar) in zip(x, asyncio.run(burst()), strict=True):
        want_mean, want_logvar = model.encoder.run(rows)
        np.testing.assert_allclose(mean, want_mean, atol=1e-6)
        np.testing.assert_allclose(logvar, want_logvar, atol=1e-6)


def test_a_failing_run_fails_every_caller_in_the_batch(model, batcher, monkeypatch):
    runner, _ = batcher()

    def broken(x, requests=1):
        raise RuntimeError("ORT exploded")

    monkeypatch.setattr(runner.graph, "run", broken)

    async def burst():
        return await asyncio.gather(*(runner.run(latents(1, i)) for i in range(5)), return_exceptions=True)

    results = asyncio.run(burst())
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


def test_closing_fails_queued_callers_instead_of_hanging_them(batcher):
    # The fixed policy holds the batch open, so the callers are still queued when it closes.
    runner, _ = batcher(max_queue_delay_us=1_000_000, queue_delay_policy="fixed")

    async def scenario():
        waiting = [asyncio.ensure_future(runner.run(latents(1, i))) for i in range(3)]
        while runner.admission.rows < 3:  # all three queued
            await asyncio.sleep(0)
        runner.close()
        return await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 2)

    results = asyncio.run(scenario())
    assert all(isinstance(r, Draining) for r in results), results
    assert runner.admission.rows == 0  # their rows no longer count as waiting


async def until(condition, turns: int = 1000) -> None:
    """Yield to the loop until `condition()` holds; fail (not hang) if it never does."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def started_and_idle(runner: BatchingRunner) -> None:
    """One request through, so the collector exists, and then idle: where the lone path starts."""
    await runner.run(latents(1, 0))
    await until(lambda: runner._idle)


async def lone_in_its_turn(runner: BatchingRunner) -> asyncio.Task:
    """A lone request, queued and yielding its one turn of the loop before it runs itself."""
    await started_and_idle(runner)
    lone = asyncio.create_task(runner.run(latents(1, 1)))
    await until(lambda: runner.admission.rows > 0)
    return lone


def where_batches_ran(runner: BatchingRunner, monkeypatch) -> list[str]:
    """The names of the tasks each ORT run of `runner` ran in, in order."""
    tasks: list[str] = []
    real = runner.graph.run

    def run(x, requests=1):
        tasks.append(asyncio.current_task().get_name())
        return real(x, requests)

    monkeypatch.setattr(runner.graph, "run", run)
    return tasks


def test_a_lone_request_runs_itself_and_company_goes_to_the_collector(model, batcher, monkeypatch):
    runner, metrics = batcher(max_queue_delay_us=1_000_000)
    tasks = where_batches_ran(runner, monkeypatch)

    async def scenario():
        await runner.run(latents(1, 0))  # starts the collector, which runs it
        await until(lambda: runner._idle)
        lone = asyncio.create_task(runner.run(latents(1, 1)), name="lone caller")
        (x,) = await lone
        pair = [asyncio.create_task(runner.run(latents(1, i)), name=f"caller {i}") for i in (2, 3)]
        await asyncio.gather(*pair)
        return x

    x = asyncio.run(scenario())
    np.testing.assert_allclose(x, model.decoder.run(latents(1, 1))[0], atol=1e-6)
    assert tasks == ["batcher-decoder", "lone caller", "batcher-decoder"]  # the pair merged in one run
    assert (
        count(metrics, "vae_serve_queue_duration_seconds_count", graph="decoder", version=DEFAULT_VERSION)
        == 4
    )
    assert runner.admission.rows == 0


def test_a_lone_request_waits_when_company_is_expected(model, batcher, monkeypatch):
    runner, _ = batcher(max_batch_size=8, max_queue_delay_us=1_000_000)
    tasks = where_batches_ran(runner, monkeypatch)

    async def scenario():
        await asyncio.gather(*(runner.run(latents(1, i)) for i in range(4)))  # four are expected next
        await until(lambda: runner._idle)
        return await done_without_waiting(runner.run(latents(1, 5)))

    assert asyncio.run(scenario()) is False
    assert tasks == ["batcher-decoder", "batcher-decoder"]


def test_a_lone_request_cancelled_before_its_run_frees_its_rows(model, batcher, monkeypatch):
    runner, _ = batcher()
    tasks = where_batches_ran(runner, monkeypatch)

    async def scenario():
        lone = await lone_in_its_turn(runner)
        lone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lone
        freed = runner.admission.rows == 0  # at once, not when the next request comes
        (x,) = await runner.run(latents(2, 2))
        return freed, x

    freed, x = asyncio.run(scenario())
    assert freed and x.shape == (2, 784)
    assert len(tasks) == 2  # the cancelled one never ran


def test_a_lone_request_whose_deadline_passes_in_the_queue_is_not_computed(model, batcher, monkeypatch):
    runner, _ = batcher()
    tasks = where_batches_ran(runner, monkeypatch)

    async def scenario():
        await started_and_idle(runner)
        # Admitted in time (runner.expired), past its deadline when its turn comes (batching.expired).
        monkeypatch.setattr(
            "vae_serve.server.runners.batching.expired", lambda deadline: deadline is not None
        )
        with pytest.raises(DeadlineExceeded, match="while queued"):
            await runner.run(latents(1, 1), deadline=time.monotonic() + 60)

    asyncio.run(scenario())
    assert len(tasks) == 1 and runner.admission.rows == 0


def test_a_lone_request_too_big_for_the_loop_goes_to_the_collector(model, batcher, monkeypatch):
    """Above INLINE_MAX_ROWS a batch runs on the worker thread: only the collector may run it, so
    that one batch at a time stays true."""
    runner, _ = batcher(max_batch_size=128)
    tasks: list[str] = []
    real = runner.graph.run_off_loop

    async def run_off_loop(x, deadline=None, requests=1):
        tasks.append(asyncio.current_task().get_name())
        return await real(x, deadline, requests)

    monkeypatch.setattr(runner.graph, "run_off_loop", run_off_loop)

    async def scenario():
        await started_and_idle(runner)
        (x,) = await asyncio.create_task(runner.run(latents(INLINE_MAX_ROWS + 1, 1)), name="big caller")
        return x

    assert asyncio.run(scenario()).shape == (INLINE_MAX_ROWS + 1, 784)
    assert tasks == ["batcher-decoder"]


def test_a_lone_request_in_its_turn_when_the_batcher_closes_is_not_computed(model, batcher, monkeypatch):
    runner, _ = batcher()
    tasks = where_batches_ran(runner, monkeypatch)

    async def scenario():
        lone = await lone_in_its_turn(runner)
        runner.close()
        with pytest.raises(Draining):
            await lone

    asyncio.run(scenario())
    assert len(tasks) == 1 and runner.admission.rows == 0
