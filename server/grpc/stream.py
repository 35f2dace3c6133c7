"""Triton's `ModelStreamInfer`: many inference requests on one bidirectional stream
(tritonclient's `start_stream` / `async_stream_infer`), each answered as soon as it is computed.

Each message is a request of its own: it runs in the call scope (request id, admission, span,
metrics under `ModelStreamInfer`) and is answered with its id; a refusal is an answer carrying
`error_message`, as Triton answers, and the stream goes on. A stream holds at most MAX_IN_FLIGHT
requests (each within --max-message-bytes) or their answers not yet sent, and its answers not yet
sent stay under MAX_UNSENT_BYTES (or are one answer); past either it is not read, so HTTP/2's
flow control holds the client, and a client that stops reading its answers stops being read.
The stream's deadline, if the client set one, bounds every request on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve.server.protocol.calls import deadline_of, request_id_from
from vae_serve.server.protocol.scope import CallScope, Method

from .edge import Edge
from .registration import Unreadable

__all__ = ["MAX_IN_FLIGHT", "answer_stream"]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64  # requests of one stream computed at once: what a client's batch of sends needs
MAX_UNSENT_BYTES = 16 * 1024 * 1024  # of one stream's answers computed but not yet sent
METHOD = Method("ModelStreamInfer", "grpc", log, work=True)

# One request's answer, written into the response it is given (the stream's answer holds it).
Answer = Callable[[oip.ModelInferRequest, float | None, oip.ModelInferResponse], Awaitable[object]]


async def answer_stream(
    requests: AsyncIterator[oip.ModelInferRequest | Unreadable],
    context: grpc.aio.ServicerContext,
    edge: Edge,
    answer: Answer,
) -> AsyncIterator[oip.ModelStreamInferResponse]:
    """The answers to `requests`, in the order they are computed; `answer` computes one."""
    metadata = context.invocation_metadata()
    deadline = deadline_of(context)
    answers: asyncio.Queue[tuple[oip.ModelStreamInferResponse, int] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    unsent = _Unsent()
    running: set[asyncio.Task[None]] = set()

    async def one(request: oip.ModelInferRequest | Unreadable) -> None:
        rid = request_id_from(metadata)
        with CallScope(METHOD, edge.metrics, edge.activity, rid, metadata, context.peer) as call:
            if isinstance(request, Unreadable):
                call.code, call.message = request.code, request.details
            else:
                call.admit()
                response = oip.ModelStreamInferResponse()
                await answer(request, deadline, response.infer_response)
                size = response.ByteSize()
                unsent.add(size)
                answers.put_nowait((response, size))
                return
        answers.put_nowait((_refusal(request, call.message), 0))

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

    reader = asyncio.create_task(read(), name="model-stream-infer")
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


def _refusal(request: oip.ModelInferRequest | Unreadable, message: str) -> oip.ModelStreamInferResponse:
    """Why a request was not answered, with what identifies it (an unreadable one has nothing)."""
    if isinstance(request, Unreadable):
        return oip.ModelStreamInferResponse(error_message=message)
    response = oip.ModelInferResponse(model_name=request.model_name[:256], id=request.id[:1024])
    response.model_version = request.model_version[:64]
    return oip.ModelStreamInferResponse(error_message=message, infer_response=response)
