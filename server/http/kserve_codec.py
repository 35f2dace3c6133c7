"""KServe v2 REST inference bodies <-> numpy, with Triton's binary tensor data extension.

A request is a JSON header, optionally followed by the raw bytes of its inputs: then the
`Inference-Header-Content-Length` header says where the JSON ends, and each input that travels
raw says how many bytes it has in `parameters.binary_data_size`. Outputs go back as JSON `data`
or, when asked (`binary_data` per output, `binary_data_output` for all), as raw bytes after the
JSON the same way. Every rule the protocol or the model sets is checked here, before any
conversion, and a breach raises `InvalidInput` naming the tensor and the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from vae_serve.errors import InvalidInput, TooLarge, quote
from vae_serve.tensor import FLOAT32_LE, MAX_DIM

from .limits import MAX_JSON_BYTES, check_json_cost, is_count

__all__ = ["HEADER_LENGTH", "MAX_ID_CHARS", "InferRequest", "encode_response", "parse_request"]

HEADER_LENGTH = "inference-header-content-length"
MAX_ID_CHARS = 1024  # the id is echoed: keep it an id


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    array: np.ndarray  # the one input, float32 [rows, width]
    binary: dict[str, bool]  # the outputs wanted, in order, and whether each goes back raw
    timeout_s: float | None  # Triton's `parameters.timeout` (microseconds), in seconds


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: expected a JSON object")
    return value


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    return _object(holder.get("parameters", {}), f"{what} parameters")


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: parameter {key!r} must be true or false")
    return value


def _shape(tensor: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 2:
        raise InvalidInput(f"input {name!r}: shape must be [rows, columns]")
    if not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
        raise InvalidInput(f"input {name!r}: shape {quote(str(shape))} is not a valid tensor shape")
    return tuple(shape)


def _header(body: bytes, header_length: str | None, max_rows: int) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary section after it."""
    end = len(body)
    if header_length is not None:
        if not is_count(header_length) or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {quote(header_length)} is not a length within the "
                f"{len(body)}-byte body"
            )
        end = int(header_length)
        if end > MAX_JSON_BYTES:
            raise TooLarge(f"a JSON header of {end} bytes is over the {MAX_JSON_BYTES}-byte JSON limit")
    check_json_cost(body, max_rows, end)
    try:
        header = orjson.loads(memoryview(body)[:end])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc})") from None
    return _object(header, "request"), memoryview(body)[end:]


def _values(tensor: dict[str, Any], name: str, count: int, binary: memoryview) -> np.ndarray:
    size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {quote(str(size))} must equal the {len(binary)} "
                f"bytes after the JSON header"
            )
        if size != 4 * count:
            raise InvalidInput(f"input {name!r}: {size} bytes of binary data, the shape needs {4 * count}")
        return np.frombuffer(binary, dtype=FLOAT32_LE)
    if len(binary):
        raise InvalidInput(f"{len(binary)} bytes after the JSON header, but no input has binary_data_size")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: needs 'data' (a list of numbers) or binary data")
    try:
        values = np.asarray(data)  # flat or nested lists alike; strings and ragged lists are refused below
    except ValueError:
        raise InvalidInput(f"input {name!r}: data is a ragged list, not a tensor") from None
    if values.dtype.kind not in "fiu":
        raise InvalidInput(f"input {name!r}: data must hold only numbers (FP32)")
    if values.size != count:
        raise InvalidInput(f"input {name!r}: data has {values.size} values, the shape needs {count}")
    return values.astype(np.float32, copy=False).reshape(-1)


def parse_request(
    body: bytes,
    header_length: str | None,
    model: str,
    input_name: str,
    output_names: tuple[str, ...],
    max_rows: int,
    width: int,
) -> InferRequest:
    """The request for `model`, which takes the one FP32 input `input_name` of `width` columns and
    has `output_names`. `max_rows`: the most rows an input may hold, checked before any conversion."""
    header, binary = _header(body, header_length, max_rows)
    max_values = max_rows * width
    request_id = header.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS):
        raise InvalidInput(f"id: must be a string of at most {MAX_ID_CHARS} characters")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise InvalidInput(f"{model} takes one input {input_name!r} in 'inputs'")
    tensor = _object(inputs[0], "input")
    if tensor.get("name") != input_name:
        raise InvalidInput(f"{model} takes one input {input_name!r}, got {quote(str(tensor.get('name')))}")
    if tensor.get("datatype") != "FP32":
        raise InvalidInput(
            f"input {input_name!r}: datatype {quote(str(tensor.get('datatype')))} is not supported; use FP32"
        )
    shape = _shape(tensor, input_name)
    count = math.prod(shape)
    if count > max_values:
        raise InvalidInput(
            f"input {input_name!r}: shape {list(shape)} holds {count} values, over the {max_values} a "
            f"request may carry; send fewer rows"
        )
    array = _values(tensor, input_name, count, binary).reshape(shape)
    parameters = _parameters(header, "request")
    all_binary = _flag(parameters, "binary_data_output", "request")
    timeout = parameters.get("timeout")
    if timeout is not None and (type(timeout) is not int or timeout <= 0):
        raise InvalidInput("parameter 'timeout': must be a positive number of microseconds")
    return InferRequest(
        request_id,
        array,
        _wanted(header, model, output_names, all_binary),
        None if timeout is None else timeout / 1e6,
    )


def _wanted(header: dict[str, Any], model: str, names: tuple[str, ...], all_binary: bool) -> dict[str, bool]:
    outputs = header.get("outputs")
    if outputs is None:
        return dict.fromkeys(names, all_binary)
    if not isinstance(outputs, list) or not 1 <= len(outputs) <= len(names):
        raise InvalidInput(f"outputs: a list of at most {len(names)} of {', '.join(names)}")
    wanted: dict[str, bool] = {}
    for output in outputs:
        output = _object(output, "output")
        name = output.get("name")
        if name not in names or name in wanted:
            raise InvalidInput(
                f"{model} has no output {quote(str(name))} (or it is asked twice); "
                f"outputs: {', '.join(names)}"
            )
        wanted[name] = (
            _flag(_parameters(output, f"output {name!r}"), "binary_data", f"output {name!r}") or all_binary
        )
    return {name: wanted[name] for name in names if name in wanted}  # the model's order


def encode_response(
    model: str, version: str, request_id: str | None, outputs: dict[str, np.ndarray], binary: dict[str, bool]
) -> tuple[bytes, int | None]:
    """(body, length of its JSON header when binary outputs follow it, else None)."""
    tensors, raw = [], []
    for name, as_binary in binary.items():
        array = np.ascontiguousarray(outputs[name], dtype=FLOAT32_LE)
        tensor: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if as_binary:
            tensor["parameters"] = {"binary_data_size": array.nbytes}
            raw.append(array.tobytes())
        else:
            tensor["data"] = array.reshape(-1)
        tensors.append(tensor)
    reply: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        reply["id"] = request_id
    header = orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, None
    return b"".join([header, *raw]), len(header)
