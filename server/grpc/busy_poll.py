"""The serving event loop, polling for a moment before it sleeps.

On a virtual machine a thread that blocks with nothing to do idles its vCPU, and waking that
vCPU again goes through the hypervisor: tens to hundreds of microseconds before the loop runs.
A sequential gRPC client pays it several times a call: grpc.aio's poller thread hands the loop
four events per unary call. So, as the kernel's haltpoll governor does for a guest's idle vCPU
(where the host leaves it off), the loop's selector first polls without blocking for up to a
window of time, and only then sleeps.

The window adapts to the gaps between events, as haltpoll's does: when the loop slept and an
event woke it within `max_us`, a longer window would have caught it, so the window doubles (up
to `max_us`); when the loop slept longer than `max_us`, traffic is sparse and polling only burns
CPU, so it halves (and below GROW_START stops). A loaded server never gets here: its selector
is called with work already waiting (timeout 0) and never polls. A timer due within the window
is polled up to; the sleep after a window is rounded up to a whole millisecond by epoll, as every
asyncio sleep is, so a timer may fire up to 1 ms late as without polling (exact timers cost
more throughput than they bought: docs/design-notes.md).
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["GROW_START", "BusyPollSelector", "loop_factory", "run"]

GROW_START = 20e-6  # seconds: the first window after none, as haltpoll's grow_start (50 us there)

T = TypeVar("T")
Ready = list[tuple[selectors.SelectorKey, int]]


class BusyPollSelector(selectors.DefaultSelector):
    """The platform's default selector, polling up to `window` seconds before each sleep."""

    def __init__(self, max_us: int) -> None:
        super().__init__()
        self.max_s = max_us / 1e6
        self.window = self.max_s  # start ready for a sequential client; sparse traffic shrinks it

    def select(self, timeout: float | None = None) -> Ready:
        if self.max_s <= 0 or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        began = time.perf_counter()
        poll_until = began + (self.window if timeout is None else min(self.window, timeout))
        while True:
            ready = super().select(0)
            if ready:
                return ready  # caught by polling: the window was long enough
            if time.perf_counter() >= poll_until:
                break
        left = None if timeout is None else max(0.0, timeout - (time.perf_counter() - began))
        ready = super().select(left)
        slept = time.perf_counter() - began
        if slept > self.max_s:
            self.window = self.window / 2 if self.window / 2 >= GROW_START else 0.0
        elif ready:
            self.window = min(self.max_s, max(GROW_START, 2 * self.window))
        return ready


def loop_factory(max_us: int) -> Callable[[], asyncio.AbstractEventLoop]:
    """New event loops polling up to `max_us` before they sleep (0: asyncio's own loop)."""
    if max_us <= 0:
        return asyncio.new_event_loop
    return lambda: asyncio.SelectorEventLoop(BusyPollSelector(max_us))


def run(main: Coroutine[Any, Any, T], max_us: int) -> T:
    """`asyncio.run(main)` on a loop that polls up to `max_us` before it sleeps."""
    with asyncio.Runner(loop_factory=loop_factory(max_us)) as runner:
        return runner.run(main)
