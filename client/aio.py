"""The asyncio client: the same methods as `VaeClient`, awaited, on a grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import ClassVar, Literal, TypeVar, overload

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from vae_serve._proto.vae.v1 import vae_pb2

from ._base import BaseClient, SampleCall
from ._requests import ModelInfo, merge_decode, merge_encode, merge_sample
from ._stream import StreamCalls
from ._transport import pinned, trace_metadata

__all__ = ["AsyncVaeClient"]

Reply = TypeVar("Reply")


class AsyncVaeClient(BaseClient):
    """`async with AsyncVaeClient("host:50051") as client: ...`; options as for `VaeClient`."""

    _aio: ClassVar[bool] = True
    _channel: grpc.aio.Channel

    async def _call(self, method: Callable[..., Awaitable[Reply]], request: Message) -> Reply:
        """One request within the deadline, retried with backoff while the server is UNAVAILABLE."""
        attempts = self._attempts()
        metadata = trace_metadata(self.options)
        while True:
            try:
                reply = await method(
                    pinned(request, self.options),
                    timeout=attempts.timeout(),
                    wait_for_ready=attempts.retrying,
                    metadata=metadata,
                )
                attempts.succeeded()
                return reply
            except grpc.RpcError as err:
                await asyncio.sleep(attempts.retry_after(err))

    async def _stream(self, calls: StreamCalls) -> None:
        """Every request of `calls` answered on one `Stream` call (again, on a new one, for those
        refused UNAVAILABLE), within one deadline; see _stream.py."""
        attempts = self._attempts()
        metadata = trace_metadata(self.options)
        while not calls.done:
            stream = self._stub.Stream(
                calls.unanswered(),
                timeout=attempts.timeout(),
                wait_for_ready=attempts.retrying,
                metadata=metadata,
            )
            try:
                async for response in stream:
                    calls.take(response)
                attempts.succeeded()
                if calls.refused is not None:
                    raise calls.refused
            except grpc.RpcError as err:
                await asyncio.sleep(attempts.retry_after(err))
            finally:
                stream.cancel()  # a refusal raised above leaves the call open: end it

    async def model_info(self, refresh: bool = False) -> ModelInfo:
        if self._info is None or refresh:
            self._info = ModelInfo.from_proto(
                await self._call(self._stub.GetModelInfo, vae_pb2.GetModelInfoRequest())
            )
        return self._info

    async def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... as grpc.health.v1 reports it."""
        # types-grpcio-health-checking's HealthStub declares none of the methods it has
        reply = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [N, D] float32 in [0, 1] -> (mean, logvar), each [N, L]."""
        x = self._rows(x, "x")
        return merge_encode(
            [
                await self._call(self._stub.Encode, r)
                for r in self._encode_requests(x, await self.model_info())
            ]
        )

    async def decode(self, z: np.ndarray) -> np.ndarray:
        """z [N, L] float32 -> x [N, D], Bernoulli means in [0, 1]."""
        z = self._rows(z, "z")
        return merge_decode(
            [
                await self._call(self._stub.Decode, r)
                for r in self._decode_requests(z, await self.model_info())
            ]
        )

    async def encode_many(self, xs: Iterable[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each x [N_i, D] encoded as `encode` would, all on one stream: many small requests
        without the cost of a call each. One deadline (`timeout`) covers them all."""
        arrays = self._each_rows(xs, "xs")
        calls = self._encode_stream(arrays, await self.model_info())
        await self._stream(calls)
        return [merge_encode([a.encode for a in answers]) for answers in calls.answers()]

    async def decode_many(self, zs: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Each z [N_i, L] decoded as `decode` would, all on one stream: many small requests
        without the cost of a call each. One deadline (`timeout`) covers them all."""
        arrays = self._each_rows(zs, "zs")
        calls = self._decode_stream(arrays, await self.model_info())
        await self._stream(calls)
        return [merge_decode([a.decode for a in answers]) for answers in calls.answers()]

    @overload
    async def sample(
        self,
        num_samples: int,
        *,
        seed: int | None = None,
        mean: np.ndarray | None = None,
        logvar: np.ndarray | None = None,
        decode: Literal[True],
    ) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    async def sample(
        self,
        num_samples: int,
        *,
        seed: int | None = None,
        mean: np.ndarray | None = None,
        logvar: np.ndarray | None = None,
        decode: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]: ...
    async def sample(
        self,
        num_samples: int,
        *,
        seed: int | None = None,
        mean: np.ndarray | None = None,
        logvar: np.ndarray | None = None,
        decode: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Prior: z [K, L] (x [K, D]); posterior (mean, logvar [N, L]): z [N, K, L] (x [N, K, D])."""
        call = SampleCall(num_samples, seed, mean, logvar, decode)
        requests = call.requests(await self.model_info(), self.options.max_message_bytes)
        return merge_sample([await self._call(self._stub.Sample, r) for r in requests], decode, num_samples)

    async def reconstruct(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Encode, draw one posterior sample per image, decode: [N, D] -> [N, D]."""
        mean, logvar = await self.encode(x)
        _, decoded = await self.sample(1, seed=seed, mean=mean, logvar=logvar, decode=True)
        return decoded[:, 0]

    async def close(self) -> None:
        self._closed = True
        await self._channel.close()

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
