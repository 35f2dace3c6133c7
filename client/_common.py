"""What the sync and asyncio clients share: options, errors, request building and splitting.

Nothing here does I/O, so both clients are the same logic around a different channel.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.tensor import FLOAT32_LE, from_tensor, to_tensor

__all__ = [
    "DEFAULT_TARGET",
    "ClientOptions",
    "ModelInfo",
    "VaeServeError",
    "backoff_delays",
    "check_float32",
    "check_width",
    "chunk_seeds",
    "from_rpc_error",
    "rows_per_request",
]

DEFAULT_TARGET = "127.0.0.1:50051"
_HEADROOM = 4096  # message framing and the other fields (a few dozen bytes), with room to spare


class VaeServeError(Exception):
    """Any failed call: the gRPC status code and the server's (or the client's) message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def from_rpc_error(err: grpc.RpcError) -> VaeServeError:
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    return VaeServeError(code, details or code.name)


def invalid(details: str) -> VaeServeError:
    return VaeServeError(grpc.StatusCode.INVALID_ARGUMENT, details)


@dataclass(frozen=True)
class ClientOptions:
    target: str = DEFAULT_TARGET
    timeout: float = 10.0  # seconds per attempt; never infinite
    root_certificates: Path | None = None  # PEM CA bundle: use TLS and trust these
    tls: bool = False  # TLS with the system's trust store (implied by root_certificates)
    max_message_bytes: int = 64 * 1024 * 1024
    retries: int = 5  # further attempts after UNAVAILABLE (the calls are idempotent)
    backoff_initial: float = 0.05
    backoff_max: float = 2.0

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    def channel_args(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # Reconnect soon after a server (re)starts, so retries find it.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.root_certificates is None and not self.tls:
            return None
        roots = self.root_certificates.read_bytes() if self.root_certificates else None
        return grpc.ssl_channel_credentials(root_certificates=roots)


def backoff_delays(options: ClientOptions, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: attempt i sleeps uniform(0, min(max, initial * 2^i))."""
    rng = rng or random.Random()
    for attempt in range(options.retries):
        yield rng.uniform(0, min(options.backoff_max, options.backoff_initial * 2**attempt))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_dim: int
    image_shape: tuple[int, ...]
    latent_dim: int
    execution_provider: str
    card: dict[str, str]
    max_request_rows: int
    max_samples: int
    max_message_bytes: int

    @classmethod
    def from_proto(cls, info: vae_pb2.ModelInfo) -> ModelInfo:
        limits = info.limits
        return cls(
            info.name, info.version, info.input_dim, tuple(info.image_shape), info.latent_dim,
            info.execution_provider, dict(info.card),
            limits.max_request_rows, limits.max_samples, limits.max_message_bytes,
        )  # fmt: skip


def check_float32(a: object, name: str) -> np.ndarray:
    """`a` as little-endian float32 [N, *]; anything else is refused before a byte is sent."""
    if not isinstance(a, np.ndarray):
        raise invalid(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise invalid(f"{name}: expected dtype float32, got {a.dtype}; convert with .astype(np.float32)")
    if a.ndim != 2:
        raise invalid(f"{name}: expected a 2-D array [N, width], got shape {list(a.shape)}")
    if len(a) == 0:
        raise invalid(f"{name}: empty batch (N = 0)")
    return a.astype(FLOAT32_LE, copy=False)


def check_width(a: np.ndarray, name: str, width: int) -> np.ndarray:
    if a.shape[1] != width:
        raise invalid(f"{name}: expected shape [N, {width}], got {list(a.shape)}")
    return a


def rows_per_request(info: ModelInfo, client_max_bytes: int, bytes_per_row: int) -> int:
    """Most rows one request may carry: under the server's row limit and both message limits."""
    budget = min(info.max_message_bytes, client_max_bytes) - _HEADROOM
    return max(1, min(info.max_request_rows, budget // bytes_per_row))


def split(a: np.ndarray, rows: int) -> list[np.ndarray]:
    return [a[i : i + rows] for i in range(0, len(a), rows)]


def chunk_seeds(seed: int | None, chunks: int) -> list[int | None]:
    """The first chunk keeps `seed` (so a request that fits matches the raw API); later chunks
    get distinct seeds derived from it, so split requests stay reproducible."""
    if seed is None:
        return [None] * chunks
    derived = [
        int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]) for i in range(1, chunks)
    ]
    return [seed, *derived]


def encode_requests(x: np.ndarray, info: ModelInfo, max_bytes: int) -> list[vae_pb2.EncodeRequest]:
    x = check_width(check_float32(x, "x"), "x", info.input_dim)
    rows = rows_per_request(info, max_bytes, 4 * max(info.input_dim, 2 * info.latent_dim))
    return [vae_pb2.EncodeRequest(x=to_tensor(part)) for part in split(x, rows)]


def merge_encode(replies: list[vae_pb2.EncodeResponse]) -> tuple[np.ndarray, np.ndarray]:
    mean = np.concatenate([from_tensor(r.mean, "mean") for r in replies])
    logvar = np.concatenate([from_tensor(r.logvar, "logvar") for r in replies])
    return mean, logvar


def decode_requests(z: np.ndarray, info: ModelInfo, max_bytes: int) -> list[vae_pb2.DecodeRequest]:
    z = check_width(check_float32(z, "z"), "z", info.latent_dim)
    rows = rows_per_request(info, max_bytes, 4 * max(info.input_dim, info.latent_dim))
    return [vae_pb2.DecodeRequest(z=to_tensor(part)) for part in split(z, rows)]


def merge_decode(replies: list[vae_pb2.DecodeResponse]) -> np.ndarray:
    return np.concatenate([from_tensor(r.x, "x") for r in replies])


def sample_requests(
    info: ModelInfo,
    max_bytes: int,
    num_samples: int,
    seed: int | None,
    mean: np.ndarray | None,
    logvar: np.ndarray | None,
    decode: bool,
) -> list[vae_pb2.SampleRequest]:
    """Prior draws split over K; posterior draws split over the rows of mean."""
    if num_samples < 1:
        raise invalid(f"num_samples: must be >= 1, got {num_samples}")
    if (mean is None) != (logvar is None):
        raise invalid("mean and logvar go together: posterior sampling needs both")
    row_bytes = 4 * (info.latent_dim + (info.input_dim if decode else 0))
    if mean is None:
        per = min(info.max_samples, rows_per_request(info, max_bytes, row_bytes))
        counts = [min(per, num_samples - i) for i in range(0, num_samples, per)]
        seeds = chunk_seeds(seed, len(counts))
        return [
            vae_pb2.SampleRequest(num_samples=k, seed=s, decode=decode)
            for k, s in zip(counts, seeds, strict=True)
        ]
    mean = check_width(check_float32(mean, "mean"), "mean", info.latent_dim)
    logvar = check_width(check_float32(logvar, "logvar"), "logvar", info.latent_dim)
    if num_samples > info.max_samples:
        raise invalid(f"num_samples: {num_samples} is above the server's limit of {info.max_samples}")
    # Rows of mean per request: the response's bytes and the N*K draws must both fit.
    rows = max(
        1,
        min(rows_per_request(info, max_bytes, row_bytes * num_samples), info.max_request_rows // num_samples),
    )
    parts = list(zip(split(mean, rows), split(logvar, rows), strict=True))
    seeds = chunk_seeds(seed, len(parts))
    return [
        vae_pb2.SampleRequest(
            num_samples=num_samples, seed=s, mean=to_tensor(m), logvar=to_tensor(lv), decode=decode
        )
        for (m, lv), s in zip(parts, seeds, strict=True)
    ]


def merge_sample(replies: list[vae_pb2.SampleResponse], decode: bool) -> tuple[np.ndarray, np.ndarray | None]:
    z = np.concatenate([from_tensor(r.z, "z") for r in replies])
    return z, np.concatenate([from_tensor(r.x, "x") for r in replies]) if decode else None
