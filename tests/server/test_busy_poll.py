"""The event loop's busy polling: what it returns, how its window adapts, and that `vae-serve`
serves on it. The selector's parent is replaced by a scripted one on a fake clock, so the window's
arithmetic is checked exactly, without timing anything."""

from __future__ import annotations

import asyncio
import selectors
import socket

import pytest

from vae_serve.server import cli
from vae_serve.server.grpc import busy_poll
from vae_serve.server.grpc.busy_poll import GROW_START, BusyPollSelector
from vae_serve.server.telemetry import tracing

US = 1e-6
POLL_COST = 2 * US  # what one non-blocking poll costs on the fake clock


class Script:
    """The parent selector on a fake clock, with one event due at `event_at` (None: none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        self.event_at: float | None = None
        self.polls = 0  # non-blocking calls
        self.sleeps: list[float | None] = []  # the timeout of each blocking call
        monkeypatch.setattr(busy_poll.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(selectors.DefaultSelector, "select", self._select)

    def _ready(self) -> list:
        if self.event_at is not None and self.now >= self.event_at:
            self.event_at = None
            return ["event"]
        return []

    def _select(self, timeout: float | None = None) -> list:  # stands in for the bound parent
        if timeout is not None and timeout <= 0:
            self.polls += 1
            self.now += POLL_COST
            return self._ready()
        self.sleeps.append(timeout)
        due = [t for t in (self.event_at, None if timeout is None else self.now + timeout) if t is not None]
        self.now = max(self.now, min(due))
        return self._ready()

    def after(self, seconds: float) -> None:
        self.event_at = self.now + seconds


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Script:
    return Script(monkeypatch)


def test_an_event_within_the_window_is_caught_without_sleeping(script):
    selector = BusyPollSelector(max_us=500)
    script.after(100 * US)
    assert selector.select(None) == ["event"]
    assert script.sleeps == []
    assert script.polls == pytest.approx(50, abs=1)
    assert selector.window == pytest.approx(500 * US)


def test_work_waiting_never_polls(script):
    selector = BusyPollSelector(max_us=500)
    assert selector.select(0) == []
    assert (script.polls, script.sleeps) == (1, [])


def test_zero_never_polls(script):
    selector = BusyPollSelector(max_us=0)
    script.after(100 * US)
    assert selector.select(None) == ["event"]
    assert (script.polls, script.sleeps) == (0, [None])


def test_sparse_traffic_shrinks_the_window_to_nothing_and_a_sequential_client_grows_it_back(script):
    selector = BusyPollSelector(max_us=500)
    windows = []
    for _ in range(6):  # events 2 ms apart: far beyond what polling may cover
        script.after(2e-3)
        assert selector.select(None) == ["event"]
        windows.append(selector.window / US)
    assert windows == pytest.approx([250, 125, 62.5, 31.25, 0, 0])
    script.polls = 0
    script.after(2e-3)
    selector.select(None)
    assert script.polls == 1  # at window 0: one look, then sleep at once

    windows = []
    for _ in range(6):  # a sequential client: the next call 300 us after the loop went idle
        script.after(300 * US)
        assert selector.select(None) == ["event"]
        windows.append(selector.window / US)
    # grows on each event that came after the window gave up, until the window catches them
    assert windows == pytest.approx([GROW_START / US, 40, 80, 160, 320, 320])


def test_the_window_stops_at_its_maximum(script):
    selector = BusyPollSelector(max_us=500)
    selector.window = 0.0
    windows = []
    for _ in range(7):  # calls 450 us apart: the window grows past them, to 500 and no further
        script.after(450 * US)
        selector.select(None)
        windows.append(selector.window / US)
    assert windows == pytest.approx([GROW_START / US, 40, 80, 160, 320, 500, 500])


def test_a_timer_due_before_the_window_ends_is_polled_up_to(script):
    selector = BusyPollSelector(max_us=500)
    assert selector.select(50 * US) == []
    assert script.now == pytest.approx(50 * US, abs=2 * POLL_COST)
    assert script.sleeps == []  # the whole timeout went on polling


def test_the_sleep_after_polling_keeps_the_callers_timeout(script):
    selector = BusyPollSelector(max_us=500)
    assert selector.select(10e-3) == []
    assert script.now == pytest.approx(10e-3)
    assert script.sleeps == [pytest.approx(10e-3 - 500 * US, abs=POLL_COST)]
    assert selector.window == pytest.approx(250 * US)  # slept long: sparse traffic


def test_a_timer_ending_a_sleep_says_nothing_about_the_traffic(script):
    selector = BusyPollSelector(max_us=2000)
    selector.window = 20 * US
    assert selector.select(1.5e-3) == []
    assert script.sleeps == [pytest.approx(1.48e-3, abs=POLL_COST)]
    assert selector.window == pytest.approx(20 * US)


def test_a_real_selector_reports_a_ready_socket():
    selector = BusyPollSelector(max_us=200)
    left, right = socket.socketpair()
    with left, right:
        selector.register(left, selectors.EVENT_READ)
        right.send(b"x")
        assert [key.fileobj for key, _ in selector.select(1.0)] == [left]
        left.recv(1)
        assert selector.select(0.001) == []
    selector.close()


def test_run_serves_on_a_polling_loop_and_zero_on_asyncio_s_own():
    async def selector_type() -> type:
        return type(asyncio.get_running_loop()._selector)  # type: ignore[attr-defined]

    assert busy_poll.run(selector_type(), 300) is BusyPollSelector
    assert busy_poll.run(selector_type(), 0) is selectors.DefaultSelector


@pytest.mark.parametrize(("flags", "expected"), [([], 500), (["--busy-poll-us", "0"], 0)])
def test_vae_serve_serves_on_the_loop_its_setting_asks_for(monkeypatch, flags, expected):
    asked = []

    def run(main, max_us):
        main.close()  # not served: only which loop it would be served on
        asked.append(max_us)

    monkeypatch.setattr(busy_poll, "run", run)
    for name in ("configure", "shutdown"):  # this process's tracing and logging stay the tests'
        monkeypatch.setattr(tracing, name, lambda: None)
    monkeypatch.setattr(cli, "configure_logging", lambda _settings: None)
    assert cli.main(["--port", "0", "--metrics-port", "0", *flags]) == 0
    assert asked == [expected]
