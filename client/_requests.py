"""Requests from numpy arrays and arrays from replies, split to fit the server's limits.

No I/O here: the sync and asyncio clients send what these functions build. Requests are
generated lazily, so a huge call never holds more than one request in memory at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.tensor import FLOAT32_LE, from_tensor, to_tensor

from ._transport import invalid

__all__ = [
    "MAX_SAMPLES_PER_CALL",
    "ModelInfo",
    "check_float32",
    "check_sample_args",
    "chunk_seeds",
    "decode_requests",
    "encode_requests",
    "merge_decode",
    "merge_encode",
    "merge_sample",
    "rows_per_request",
    "sample_requests",
]

_HEADROOM = 4096  # message framing and the other fields (a few dozen bytes), with room to spare
MAX_SAMPLES_PER_CALL = 1 << 20  # one call's prior draws; more would not fit a sane response
_UINT64 = 2**64
_EXACT_INTEGER = 2**53  # the largest integer a Struct's double holds exactly


@dataclass(frozen=True)
class ModelInfo:
    """What GetModelInfo says. `card` is the model card (the version's model.json) with its values'
    own types: `card["epochs"]` is an int, `card["principal_directions"]` a dict."""

    name: str
    version: str
    input_dim: int
    image_shape: tuple[int, ...]
    latent_dim: int
    execution_provider: str
    card: dict[str, Any]
    max_request_rows: int
    max_samples: int
    max_message_bytes: int
    server_id: str

    @classmethod
    def from_proto(cls, info: vae_pb2.ModelInfo) -> ModelInfo:
        limits = info.limits
        return cls(
            info.name,
            info.version,
            info.input_dim,
            tuple(info.image_shape),
            info.latent_dim,
            info.execution_provider,
            _card(info),
            limits.max_request_rows,
            limits.max_samples,
            limits.max_message_bytes,
            info.server_id,
        )


def _card(info: vae_pb2.ModelInfo) -> dict[str, Any]:
    if info.HasField("model_card"):
        return _typed(struct_pb2.Value(struct_value=info.model_card))
    # A server older than model_card sends only strings, numbers and nested values as JSON text.
    return {key: _parsed(value) for key, value in info.card.items()}


def _typed(value: struct_pb2.Value) -> Any:
    """A Struct value as Python: a whole number as int (Struct numbers are all doubles, JSON's)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _typed(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_typed(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) <= _EXACT_INTEGER else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # a string value, sent as it is (or not JSON a parser takes)
        return text


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


def _check_width(a: np.ndarray, name: str, width: int) -> None:
    if a.shape[1] != width:
        raise invalid(f"{name}: expected shape [N, {width}], got {list(a.shape)}")


def check_sample_args(
    num_samples: object, seed: object, mean: np.ndarray | None, logvar: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Everything about a sample call that needs no server; returns mean and logvar checked."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool):
        raise invalid(f"num_samples: expected an integer, got {type(num_samples).__name__}")
    if not 1 <= num_samples <= MAX_SAMPLES_PER_CALL:
        raise invalid(f"num_samples: must be between 1 and {MAX_SAMPLES_PER_CALL}, got {num_samples}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < _UINT64):
        raise invalid(f"seed: expected an integer in [0, 2**64), got {seed!r}")
    if (mean is None) != (logvar is None):
        raise invalid("mean and logvar go together: posterior sampling needs both")
    if mean is None:
        return None, None
    return check_float32(mean, "mean"), check_float32(logvar, "logvar")


def rows_per_request(info: ModelInfo, client_max_bytes: int, bytes_per_row: int) -> int:
    """Most rows one request may carry: under the server's row limit and both message limits."""
    budget = min(info.max_message_bytes, client_max_bytes) - _HEADROOM
    return max(1, min(info.max_request_rows, budget // bytes_per_row))


def _split(a: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    return (a[i : i + rows] for i in range(0, len(a), rows))


def chunk_seeds(seed: int | None, chunks: int) -> list[int | None]:
    """The first chunk keeps `seed` (so a request that fits matches the raw API); later chunks
    get distinct seeds derived from it, so split requests stay reproducible."""
    if seed is None:
        return [None] * chunks
    derived = (np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] for i in range(1, chunks))
    return [seed, *(int(d) for d in derived)]


def encode_requests(x: np.ndarray, info: ModelInfo, max_bytes: int) -> Iterator[vae_pb2.EncodeRequest]:
    _check_width(x, "x", info.input_dim)
    rows = rows_per_request(info, max_bytes, 4 * max(info.input_dim, 2 * info.latent_dim))
    return (vae_pb2.EncodeRequest(x=to_tensor(part)) for part in _split(x, rows))


def merge_encode(replies: list[vae_pb2.EncodeResponse]) -> tuple[np.ndarray, np.ndarray]:
    mean = np.concatenate([from_tensor(r.mean, "mean") for r in replies])
    logvar = np.concatenate([from_tensor(r.logvar, "logvar") for r in replies])
    return mean, logvar


def decode_requests(z: np.ndarray, info: ModelInfo, max_bytes: int) -> Iterator[vae_pb2.DecodeRequest]:
    _check_width(z, "z", info.latent_dim)
    rows = rows_per_request(info, max_bytes, 4 * max(info.input_dim, info.latent_dim))
    return (vae_pb2.DecodeRequest(z=to_tensor(part)) for part in _split(z, rows))


def merge_decode(replies: list[vae_pb2.DecodeResponse]) -> np.ndarray:
    return np.concatenate([from_tensor(r.x, "x") for r in replies])


def _prior_requests(
    info: ModelInfo, max_bytes: int, num_samples: int, seed: int | None, decode: bool
) -> Iterator[vae_pb2.SampleRequest]:
    row_bytes = 4 * (info.latent_dim + (info.input_dim if decode else 0))
    per = min(info.max_samples, rows_per_request(info, max_bytes, row_bytes))
    counts = [min(per, num_samples - i) for i in range(0, num_samples, per)]
    for k, s in zip(counts, chunk_seeds(seed, len(counts)), strict=True):
        yield vae_pb2.SampleRequest(num_samples=k, seed=s, decode=decode)


def _posterior_requests(
    info: ModelInfo,
    max_bytes: int,
    num_samples: int,
    seed: int | None,
    mean: np.ndarray,
    logvar: np.ndarray,
    decode: bool,
) -> Iterator[vae_pb2.SampleRequest]:
    _check_width(mean, "mean", info.latent_dim)
    _check_width(logvar, "logvar", info.latent_dim)
    if logvar.shape != mean.shape:
        raise invalid(f"logvar: shape {list(logvar.shape)} must equal mean's {list(mean.shape)}")
    draw_bytes = 4 * (info.latent_dim + (info.input_dim if decode else 0))
    # K per request: under the server's sample and row limits, and one row's draws in a message.
    per_k = min(num_samples, info.max_samples, rows_per_request(info, max_bytes, draw_bytes))
    counts = [min(per_k, num_samples - i) for i in range(0, num_samples, per_k)]
    # Rows of mean per request: N_i * K_j draws within the row limit, the reply's bytes (and the
    # request's own mean and logvar) within both message limits.
    row_bytes = max(draw_bytes * per_k, 8 * info.latent_dim)
    rows = max(1, min(rows_per_request(info, max_bytes, row_bytes), info.max_request_rows // per_k))
    starts = range(0, len(mean), rows)
    seeds = iter(chunk_seeds(seed, len(starts) * len(counts)))  # row-major: rows, then K
    for start in starts:
        m, lv = to_tensor(mean[start : start + rows]), to_tensor(logvar[start : start + rows])
        for k in counts:
            yield vae_pb2.SampleRequest(num_samples=k, seed=next(seeds), mean=m, logvar=lv, decode=decode)


def sample_requests(
    info: ModelInfo,
    max_bytes: int,
    num_samples: int,
    seed: int | None,
    mean: np.ndarray | None,
    logvar: np.ndarray | None,
    decode: bool,
) -> Iterator[vae_pb2.SampleRequest]:
    """Prior draws split over K; posterior draws split over the rows of mean, and over K too
    where one row's K draws exceed a limit. Each request after the first gets a seed derived
    from `seed`, so a split call is as reproducible as one that fits; `merge_sample` reassembles
    the replies in order."""
    if mean is None or logvar is None:
        return _prior_requests(info, max_bytes, num_samples, seed, decode)
    return _posterior_requests(info, max_bytes, num_samples, seed, mean, logvar, decode)


def merge_sample(
    replies: list[vae_pb2.SampleResponse], decode: bool, num_samples: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Prior replies [K_j, ...] joined over K; posterior ones [N_i, K_j, ...] joined over K within
    each slice of rows (as `sample_requests` made them), then over the rows."""
    zs = [from_tensor(r.z, "z") for r in replies]
    xs = [from_tensor(r.x, "x") for r in replies] if decode else None
    if not zs or zs[0].ndim < 3:
        return np.concatenate(zs), np.concatenate(xs) if xs is not None else None
    groups: list[list[int]] = []
    done = num_samples
    for i, z in enumerate(zs):
        if done == num_samples:
            groups.append([])
            done = 0
        groups[-1].append(i)
        done += z.shape[1]

    def join(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.concatenate([parts[i] for i in group], axis=1) for group in groups])

    return join(zs), join(xs) if xs is not None else None
