"""The asyncio client: the same methods as `VaeClient`, awaited, on a grpc.aio channel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc

from . import _common as c
from ._common import ClientOptions, ModelInfo

__all__ = ["AsyncVaeClient"]

Reply = TypeVar("Reply")


class AsyncVaeClient:
    """`async with AsyncVaeClient("host:50051") as client: ...`; options as for `VaeClient`."""

    def __init__(self, target: str = c.DEFAULT_TARGET, **options: Any) -> None:
        self.options = ClientOptions(target=target, **options)
        credentials = self.options.credentials()
        args = self.options.channel_args()
        self._channel = (
            grpc.aio.secure_channel(target, credentials, args)
            if credentials
            else grpc.aio.insecure_channel(target, args)
        )
        self._stub = vae_pb2_grpc.VAEServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._info: ModelInfo | None = None

    async def _call(self, method: Callable[..., Awaitable[Reply]], request: object) -> Reply:
        delays = c.backoff_delays(self.options)
        while True:
            try:
                return await method(request, timeout=self.options.timeout)
            except grpc.RpcError as err:
                delay = next(delays, None) if err.code() is grpc.StatusCode.UNAVAILABLE else None
                if delay is None:
                    raise c.from_rpc_error(err) from None
                await asyncio.sleep(delay)

    async def model_info(self, refresh: bool = False) -> ModelInfo:
        if self._info is None or refresh:
            reply = await self._call(self._stub.GetModelInfo, vae_pb2.GetModelInfoRequest())
            self._info = ModelInfo.from_proto(reply)
        return self._info

    async def health(self, service: str = "") -> str:
        reply = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = c.check_float32(x, "x")  # before anything, even model_info, is sent
        requests = c.encode_requests(x, await self.model_info(), self.options.max_message_bytes)
        return c.merge_encode([await self._call(self._stub.Encode, r) for r in requests])

    async def decode(self, z: np.ndarray) -> np.ndarray:
        z = c.check_float32(z, "z")
        requests = c.decode_requests(z, await self.model_info(), self.options.max_message_bytes)
        return c.merge_decode([await self._call(self._stub.Decode, r) for r in requests])

    async def sample(
        self,
        num_samples: int,
        seed: int | None = None,
        mean: np.ndarray | None = None,
        logvar: np.ndarray | None = None,
        decode: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        info, limit = await self.model_info(), self.options.max_message_bytes
        requests = c.sample_requests(info, limit, num_samples, seed, mean, logvar, decode)
        return c.merge_sample([await self._call(self._stub.Sample, r) for r in requests], decode)

    async def reconstruct(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        mean, logvar = await self.encode(x)
        _, decoded = await self.sample(1, seed=seed, mean=mean, logvar=logvar, decode=True)
        return decoded[:, 0]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
