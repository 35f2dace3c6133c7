"""The Open Inference Protocol's rules for an inference request, written once for both transports.

Each breach raises `InvalidInput` with one message per rule, naming the tensor; counts and sizes
are checked before anything is converted, and a client's own strings are never echoed whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vae_serve.errors import InvalidInput, quote
from vae_serve.tensor import FLOAT32_LE, MAX_DIM

from .oip_messages import InferRequest

__all__ = ["MAX_ID_CHARS", "check_id", "input_array", "wanted_outputs"]

MAX_ID_CHARS = 1024  # a request id is echoed in the response: keep it an id


def check_id(request_id: str | None) -> None:
    if request_id is not None and len(request_id) > MAX_ID_CHARS:
        raise InvalidInput(f"id: {len(request_id)} characters, over the {MAX_ID_CHARS} echoed back")


def wanted_outputs(request: InferRequest, model: str, available: tuple[str, ...]) -> list[str]:
    """The outputs the request names, in its order (every one, in the model's order, when it names
    none), checked before any compute."""
    wanted = [o.name for o in request.outputs] or list(available)
    if len(set(wanted)) != len(wanted):
        raise InvalidInput(f"outputs requested more than once: {', '.join(map(quote, wanted[:8]))}")
    unknown = [n for n in wanted if n not in available]
    if unknown:
        shown = ", ".join(map(quote, unknown[:4]))
        raise InvalidInput(f"{model} has no output {shown}; outputs: {', '.join(available)}")
    return wanted


def _matrix_shape(shape: Sequence[int], name: str) -> tuple[int, int]:
    if len(shape) != 2:  # before the shape is copied: it can hold millions of entries
        raise InvalidInput(f"input {name!r}: shape must be [rows, columns], got rank {len(shape)}")
    rows, columns = shape
    if not (0 <= rows <= MAX_DIM and 0 <= columns <= MAX_DIM):
        raise InvalidInput(f"input {name!r}: shape {[rows, columns]} is not a valid tensor shape")
    return rows, columns


def input_array(request: InferRequest, model: str, name: str, max_values: int) -> np.ndarray:
    """The one FP32 input `name` of `model` as a [rows, columns] array. `max_values`: the most
    values a request may carry, checked before any conversion."""
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name != name:
        got = ", ".join(quote(t.name) for t in inputs[:4]) or "none"
        more = f" and {len(inputs) - 4} more" if len(inputs) > 4 else ""
        raise InvalidInput(f"{model} takes one input {name!r}, got {got}{more}")
    tensor = inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInput(f"input {name!r}: datatype {quote(tensor.datatype)} is not supported; use FP32")
    shape = _matrix_shape(tensor.shape, name)
    count = shape[0] * shape[1]
    if count > max_values:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} holds {count} values, over the {max_values} a request "
            f"may carry; send fewer rows"
        )
    data = tensor.data
    if isinstance(data, bytes | memoryview):
        if len(data) != 4 * count:
            raise InvalidInput(
                f"input {name!r}: {len(data)} bytes, but FP32 shape {list(shape)} needs {4 * count}"
            )
        flat = np.frombuffer(data, dtype=FLOAT32_LE)
    else:
        found = data.count()
        if found != count:
            raise InvalidInput(f"input {name!r}: {found} values, but shape {list(shape)} needs {count}")
        flat = data.array()
    return flat.reshape(shape)
