"""The blocking client: numpy in, numpy out, one reused channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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

__all__ = ["VaeClient"]

Reply = TypeVar("Reply")


class VaeClient(BaseClient):
    """`VaeClient("host:50051")`; see `ClientOptions` for TLS, deadlines, retries and limits."""

    _aio: ClassVar[bool] = False
    _channel: grpc.Channel

    def _call(self, method: Callable[..., Reply], request: Message) -> Reply:
        """One request within the deadline, retried with backoff while the server is UNAVAILABLE."""
        attempts = self._attempts()
        metadata = trace_metadata(self.options)
        while True:
            try:
                reply = method(
                    pinned(request, self.options),
                    timeout=attempts.timeout(),
                    wait_for_ready=attempts.retrying,
                    metadata=metadata,
                )
                attempts.succeeded()
                return reply
            except grpc.RpcError as err:
                time.sleep(attempts.retry_after(err))

    def _stream(self, calls: StreamCalls) -> None:
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
                for response in stream:
                    calls.take(response)
                attempts.succeeded()
                if calls.refused is not None:
                    raise calls.refused
            except grpc.RpcError as err:
                time.sleep(attempts.retry_after(err))
            finally:
                stream.cancel()  # a refusal raised above leaves the call open: end it

    def model_info(self, refresh: bool = False) -> ModelInfo:
        if self._info is None or refresh:
            self._info = ModelInfo.from_proto(
                self._call(self._stub.GetModelInfo, vae_pb2.GetModelInfoRequest())
            )
        return self._info

    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... as grpc.health.v1 reports it."""
        # types-grpcio-health-checking's HealthStub declares none of the methods it has
        reply = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [N, D] float32 in [0, 1] -> (mean, logvar), each [N, L]."""
        x = self._rows(x, "x")
        return merge_encode(
            [self._call(self._stub.Encode, r) for r in self._encode_requests(x, self.model_info())]
        )

    def decode(self, z: np.ndarray) -> np.ndarray:
        """z [N, L] float32 -> x [N, D], Bernoulli means in [0, 1]."""
        z = self._rows(z, "z")
        return merge_decode(
            [self._call(self._stub.Decode, r) for r in self._decode_requests(z, self.model_info())]
        )

    def encode_many(self, xs: Iterable[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each x [N_i, D] encoded as `encode` would, all on one stream: many small requests
        without the cost of a call each. One deadline (`timeout`) covers them all."""
        arrays = self._each_rows(xs, "xs")
        calls = self._encode_stream(arrays, self.model_info())
        self._stream(calls)
        return [merge_encode([a.encode for a in answers]) for answers in calls.answers()]

    def decode_many(self, zs: Iterable[np.ndarray]) -> list[np.ndarray]:
        """Each z [N_i, L] decoded as `decode` would, all on one stream: many small requests
        without the cost of a call each. One deadline (`timeout`) covers them all."""
        arrays = self._each_rows(zs, "zs")
        calls = self._decode_stream(arrays, self.model_info())
        self._stream(calls)
        return [merge_decode([a.decode for a in answers]) for answers in calls.answers()]

    @overload
    def sample(
        self,
        num_samples: int,
        *,
        seed: int | None = None,
        mean: np.ndarray | None = None,
        logvar: np.ndarray | None = None,
        decode: Literal[True],
    ) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    def sample(
        self,
        num_samples: int,
        *,
        seed: int | None = None,
        mean: np.ndarray | None = None,
        logvar: np.ndarray | None = None,
        decode: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]: ...
    def sample(
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
        requests = call.requests(self.model_info(), self.options.max_message_bytes)
        return merge_sample([self._call(self._stub.Sample, r) for r in requests], decode, num_samples)

    def reconstruct(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Encode, draw one posterior sample per image, decode: [N, D] -> [N, D]."""
        mean, logvar = self.encode(x)
        _, decoded = self.sample(1, seed=seed, mean=mean, logvar=logvar, decode=True)
        return decoded[:, 0]

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
