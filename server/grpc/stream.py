"""Many requests on one bidirectional stream, each answered as soon as it is computed: the native
`Stream` and Triton's `ModelStreamInfer` (tritonclient's `start_stream` / `async_stream_infer`).

Each message is a request of its own: it runs in the call scope (request id, admission, span,
metrics under the stream's method) and is answered with its id; a refusal is an answer that says
why, and the stream goes on. An answer over --max-message-bytes with its wrapping is refused for
its request alone, not sent to end the call. A stream holds at most MAX_IN_FLIGHT requests (each
within --max-message-bytes) in progress or answered and not yet sent, and reads no new request
while its answers not yet sent are over MAX_UNSENT_BYTES: past either, HTTP/2's flow control
holds the client, and a client that stops reading its answers stops being read. So one stream
holds at most MAX_IN_FLIGHT answers, however large each is. The stream's deadline, if the client
set one, bounds every request on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import Message

from vae_serve.errors import TooLarge
from vae_serve.server.protocol.calls import deadline_of, request_id_from
from vae_serve.server.protocol.scope import CallScope, Method

from .edge import Edge
from .registration import Unreadable

__all__ = ["MAX_IN_FLIGHT", "StreamRules", "answer_stream"]

MAX_IN_FLIGHT = 64  # requests of one stream computed at once: what a client's batch of sends needs
MAX_UNSENT_BYTES = 16 * 1024 * 1024  # of one stream's answers computed but not yet sent

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


@dataclass(frozen=True)
class StreamRules(Generic[Request, Response]):
    """What one streaming method does with each request: `answer` computes its answer (raising
    what a unary call would), `refusal` says why it has none, with what identifies it; no answer
    is sent over `max_bytes` (the server's message limit)."""

    method: Method
    answer: Callable[[Request, float | None], Awaitable[Response]]
    refusal: Callable[[Request | Unreadable, grpc.StatusCode, str], Response]
    max_bytes: int


async def answer_stream(
    requests: AsyncIterator[Request | Unreadable],
    context: grpc.aio.ServicerContext,
    edge: Edge,
    rules: StreamRules[Request, Response],
) -> AsyncIterator[Response]:
    """The answers to `requests`, in the order they are computed."""
    metadata = context.invocation_metadata()
    deadline = deadline_of(context)
    method = rules.method
    answers: asyncio.Queue[tuple[Response, int] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    unsent = _Unsent()
    running: set[asyncio.Task[None]] = set()

    async def one(request: Request | Unreadable) -> None:
        rid = request_id_from(metadata)
        with CallScope(method, edge.metrics, edge.activity, rid, metadata, context.peer) as call:
            if isinstance(request, Unreadable):
                call.code, call.message = request.code, request.details
            else:
                call.admit()
                response = await rules.answer(request, deadline)
                size = response.ByteSize()
                if size > rules.max_bytes:  # sent, it would end the call and every answer on it
                    raise TooLarge(
                        f"answer would be {size} bytes, over the {rules.max_bytes}-byte message limit"
                    )
                unsent.add(size)
                answers.put_nowait((response, size))
                return
        answers.put_nowait((rules.refusal(request, call.code, call.message), 0))

    async def read() -> None:
        try:
            async for request in requests:
                await unsent.room.wait()
                await slots.acquire()
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read(), name=f"{method.name}-reader")
    try:
        while (item := await answers.get()) is not None:
            response, size = item
            yield response
            unsent.remove(size)
            slots.release()  # its answer is sent: a slot holds a request until then, not only its run
        await reader  # a failure to read the stream ends the call with it
    finally:
        for task in (reader, *running):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(reader, *running, return_exceptions=True)


class _Unsent:
    """Bytes of answers computed and not yet sent; `room` is set while they are under the bound."""

    def __init__(self) -> None:
        self.bytes = 0
        self.room = asyncio.Event()
        self.room.set()

    def add(self, size: int) -> None:
        self.bytes += size
        if self.bytes > MAX_UNSENT_BYTES:
            self.room.clear()

    def remove(self, size: int) -> None:
        self.bytes -= size
        if self.bytes <= MAX_UNSENT_BYTES:
            self.room.set()
