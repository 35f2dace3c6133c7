"""numpy <-> `vae.v1.Tensor`: dense little-endian float32, row-major.

Decoding checks everything a client can get wrong about the bytes themselves and raises
`InvalidInput` naming the field; what the values mean is the data plane's business.
"""

from __future__ import annotations

import math

import numpy as np

from ._proto.vae.v1 import vae_pb2
from .errors import InvalidInput

__all__ = ["FLOAT32_LE", "MAX_DIM", "MAX_RANK", "fill_tensor", "from_tensor", "to_tensor"]

FLOAT32_LE = np.dtype("<f4")
MAX_RANK = 8
MAX_DIM = 2**31 - 1  # more rows than any message can carry; keeps numpy's shape arithmetic exact


def to_tensor(array: np.ndarray) -> vae_pb2.Tensor:
    return fill_tensor(vae_pb2.Tensor(), array)


def fill_tensor(tensor: vae_pb2.Tensor, array: np.ndarray) -> vae_pb2.Tensor:
    """`array` written into `tensor`, which may be a field of a message being built (no copy of
    the message after it is built)."""
    array = np.ascontiguousarray(array, dtype=FLOAT32_LE)
    tensor.shape[:] = array.shape
    tensor.data = array.tobytes()
    return tensor


def from_tensor(tensor: vae_pb2.Tensor, field: str) -> np.ndarray:
    """The array `tensor` holds (a read-only view of its bytes, no copy)."""
    if len(tensor.shape) > MAX_RANK:  # before any copy of the field: it can hold millions
        raise InvalidInput(f"{field}: rank {len(tensor.shape)} is above the supported {MAX_RANK}")
    shape = tuple(tensor.shape)
    if any(d < 0 or d > MAX_DIM for d in shape):
        raise InvalidInput(f"{field}: dimensions must be in [0, {MAX_DIM}], got shape {list(shape)}")
    count = math.prod(shape)
    if len(tensor.data) != 4 * count:
        raise InvalidInput(
            f"{field}: data has {len(tensor.data)} bytes but shape {list(shape)} needs {4 * count} "
            f"(float32 little-endian, row-major)"
        )
    try:
        return np.frombuffer(tensor.data, dtype=FLOAT32_LE).reshape(shape)
    except ValueError as exc:  # e.g. an empty array whose other dimensions overflow numpy's size
        raise InvalidInput(f"{field}: shape {list(shape)} cannot be represented ({exc})") from None
