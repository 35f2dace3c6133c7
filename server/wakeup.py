"""A socket that becomes readable whenever a signal arrives, for the serving loop and for the
worker supervisor alike: a wait on it ends at once, whichever thread the kernel gives the signal
to (Python runs handlers on the main thread only between bytecodes, so a blocked wait would not)."""

from __future__ import annotations

import contextlib
import signal
import socket

__all__ = ["SignalWakeUp"]


class SignalWakeUp:
    """The write end of a socket pair, made the process's signal wake-up fd by `install`."""

    def __init__(self) -> None:
        self.receive, self._send = socket.socketpair()
        self.receive.setblocking(False)
        self._send.setblocking(False)
        self._previous: int | None = None

    def install(self) -> None:
        self._previous = signal.set_wakeup_fd(self._send.fileno(), warn_on_full_buffer=False)

    def fds(self) -> tuple[int, int]:
        """Both ends: a forked child closes them."""
        return self.receive.fileno(), self._send.fileno()

    def discard(self) -> None:
        """Read away the bytes the signals wrote, so the next wait blocks until the next signal."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self.receive.recv(512):
                pass

    def close(self) -> None:
        if self._previous is not None:  # before the socket goes: a late signal must not write to a closed fd
            signal.set_wakeup_fd(self._previous)
            self._previous = None
        self.receive.close()
        self._send.close()
