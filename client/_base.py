"""What the blocking and the asyncio client share: options, channel, stubs, and how each call's
requests are built and checked (httpx's BaseClient pattern). Each subclass adds only its way of
waiting for replies, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
from grpc_health.v1 import health_pb2_grpc

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc

from ._requests import (
    ModelInfo,
    check_float32,
    check_sample_args,
    decode_requests,
    encode_requests,
    sample_requests,
)
from ._stream import StreamCalls
from ._transport import (
    DEFAULT_TARGET,
    Attempts,
    ClientOptions,
    Link,
    closed_client_error,
    open_channel,
    pinned,
)

__all__ = ["BaseClient", "SampleCall"]


class SampleCall:
    """One `sample` call's arguments, checked before anything (even model_info) is sent."""

    def __init__(
        self,
        num_samples: int,
        seed: int | None,
        mean: np.ndarray | None,
        logvar: np.ndarray | None,
        decode: bool,
    ) -> None:
        self.mean, self.logvar = check_sample_args(num_samples, seed, mean, logvar)
        self.num_samples, self.seed, self.decode = num_samples, seed, decode

    def requests(self, info: ModelInfo, max_bytes: int) -> Iterator[vae_pb2.SampleRequest]:
        return sample_requests(
            info, max_bytes, self.num_samples, self.seed, self.mean, self.logvar, self.decode
        )


class BaseClient:
    """`Client("host:50051", **options)`; see `ClientOptions` for TLS, deadlines, retries and limits."""

    _aio: ClassVar[bool]

    def __init__(self, target: str = DEFAULT_TARGET, **options: Any) -> None:
        self.options = ClientOptions(target=target, **options)
        self._channel = open_channel(self.options, aio=self._aio)
        self._stub = vae_pb2_grpc.VAEServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._info: ModelInfo | None = None
        self._link = Link(self.options.target)
        self._closed = False

    def _attempts(self) -> Attempts:
        """The attempts of one request; a closed client refuses before anything is sent."""
        if self._closed:
            raise closed_client_error()
        return Attempts(self.options, self._link)

    def _encode_requests(self, x: np.ndarray, info: ModelInfo) -> Iterator[vae_pb2.EncodeRequest]:
        return encode_requests(x, info, self.options.max_message_bytes)

    def _decode_requests(self, z: np.ndarray, info: ModelInfo) -> Iterator[vae_pb2.DecodeRequest]:
        return decode_requests(z, info, self.options.max_message_bytes)

    @staticmethod
    def _rows(array: np.ndarray, field: str) -> np.ndarray:
        return check_float32(array, field)  # before anything, even model_info, is sent

    def _encode_stream(self, xs: list[np.ndarray], info: ModelInfo) -> StreamCalls:
        return StreamCalls(
            [vae_pb2.StreamRequest(encode=pinned(r, self.options)) for r in self._encode_requests(x, info)]
            for x in xs
        )

    def _decode_stream(self, zs: list[np.ndarray], info: ModelInfo) -> StreamCalls:
        return StreamCalls(
            [vae_pb2.StreamRequest(decode=pinned(r, self.options)) for r in self._decode_requests(z, info)]
            for z in zs
        )

    @classmethod
    def _each_rows(cls, arrays: Iterable[np.ndarray], field: str) -> list[np.ndarray]:
        return [cls._rows(a, f"{field}[{i}]") for i, a in enumerate(arrays)]
