"""Many requests on one `Stream` call: what the blocking and the asyncio client share.

Every request of a `*_many` call goes out on one stream, tagged with its place; the server answers
each as soon as it is computed, in any order. One deadline covers the whole call. A request
refused UNAVAILABLE (a draining or restarting server), like a stream that ends so, is sent again on
a new stream with the call's backoff, as a unary call would be: every request is idempotent. Any
other refusal ends the call with its status.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from vae_serve._proto.vae.v1 import vae_pb2

from ._transport import VaeServeError

__all__ = ["StreamCalls"]

_CODES = {code.value[0]: code for code in grpc.StatusCode}  # a StreamError's number -> its status


class _Refused(grpc.RpcError):
    """A request the stream refused UNAVAILABLE, as the retry schedule reads errors."""

    def __init__(self, error: vae_pb2.StreamError) -> None:
        self._details = error.message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


class StreamCalls:
    """The requests of one `*_many` call, their answers so far, and what is left to send."""

    def __init__(self, items: Iterable[Iterable[vae_pb2.StreamRequest]]) -> None:
        """`items`: each item's requests (an item larger than a message is several)."""
        self._requests: dict[str, vae_pb2.StreamRequest] = {}
        self._items: list[list[str]] = []
        for i, requests in enumerate(items):
            ids = []
            for j, request in enumerate(requests):
                request.id = f"{i}.{j}"
                self._requests[request.id] = request
                ids.append(request.id)
            self._items.append(ids)
        self._answers: dict[str, vae_pb2.StreamResponse] = {}
        self.refused: _Refused | None = None  # the last UNAVAILABLE refusal of this round

    def unanswered(self) -> Iterator[vae_pb2.StreamRequest]:
        """What this round sends: every request not answered yet."""
        self.refused = None
        return (r for rid, r in self._requests.items() if rid not in self._answers)

    @property
    def done(self) -> bool:
        return len(self._answers) == len(self._requests)

    def take(self, response: vae_pb2.StreamResponse) -> None:
        """Keep an answer; raise a refusal that retrying cannot mend (one of a message the server
        could not read comes with no id)."""
        if response.WhichOneof("result") == "error":
            code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
            if code is not grpc.StatusCode.UNAVAILABLE or response.id not in self._requests:
                raise VaeServeError(code, response.error.message or code.name)
            self.refused = _Refused(response.error)
            return
        if response.id not in self._requests:
            raise VaeServeError(
                grpc.StatusCode.INTERNAL, f"an answer to no request sent ({response.id[:40]!r})"
            )
        self._answers[response.id] = response

    def answers(self) -> Iterator[list[vae_pb2.StreamResponse]]:
        """Each item's answers, in the order of its requests."""
        return ([self._answers[rid] for rid in ids] for ids in self._items)
