"""KServe v2 REST inference bodies <-> the typed messages of protocol/oip_messages.py, with Triton's
binary tensor data extension.

A request is a JSON header, optionally followed by the raw bytes of its inputs: then the
`Inference-Header-Content-Length` header says where the JSON ends, and each input that travels
raw says how many bytes it has in `parameters.binary_data_size`, in the order of the inputs.
Outputs go back as JSON `data` or, when asked (`binary_data` per output, `binary_data_output` for
all), as raw bytes after the JSON the same way. Only what is REST's own is checked here (JSON
types, the binary framing, Triton's parameters); every rule of the protocol is the service's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from vae_serve.errors import InvalidInput, TooLarge, quote
from vae_serve.server.protocol.oip_messages import InferInput, InferRequest, RequestedOutput
from vae_serve.tensor import FLOAT32_LE

from .limits import MAX_JSON_BYTES, check_json_cost, is_count

__all__ = ["HEADER_LENGTH", "encode_response", "parse_request"]

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class _Numbers:
    """JSON `data`, converted as it is parsed: both hold the GIL, so both run where the body's
    parse does (off the event loop when it is large), and its cost was bounded before."""

    values: np.ndarray  # float32, flat

    def count(self) -> int:
        return self.values.size

    def array(self) -> np.ndarray:
        return self.values


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: expected a JSON object")
    return value


def _list(holder: dict[str, Any], key: str, what: str) -> list[Any]:
    value = holder.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{what}: {key!r} must be a list")
    return value


def _string(holder: dict[str, Any], key: str, what: str) -> str:
    value = holder.get(key)
    if not isinstance(value, str):
        raise InvalidInput(f"{what}: {key!r} must be a string")
    return value


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    return _object(holder.get("parameters", {}), f"{what} parameters")


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: parameter {key!r} must be true or false")
    return value


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


def _numbers(data: list[Any], what: str) -> _Numbers:
    try:
        values = np.asarray(data)  # flat or nested lists alike; strings and ragged lists are refused below
    except ValueError:
        raise InvalidInput(f"{what}: data is a ragged list, not a tensor") from None
    if values.dtype.kind not in "fiu":
        raise InvalidInput(f"{what}: data must hold only numbers (FP32)")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which validation refuses
        return _Numbers(values.astype(np.float32, copy=False).reshape(-1))


def _input(value: Any, binary: memoryview) -> tuple[InferInput, memoryview]:
    """One input, and what is left of the binary section after its bytes."""
    tensor = _object(value, "input")
    name = _string(tensor, "name", "input")
    what = f"input {quote(name)}"
    datatype = _string(tensor, "datatype", what)
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise InvalidInput(f"{what}: shape must be a list of integers")
    size = _parameters(tensor, what).get("binary_data_size")
    if size is None:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidInput(f"{what}: needs 'data' (a list of numbers) or binary data")
        return InferInput(name, datatype, shape, _numbers(data, what)), binary
    if type(size) is not int or not 0 <= size <= len(binary):
        raise InvalidInput(
            f"{what}: binary_data_size {quote(str(size))} is not within the {len(binary)} bytes of binary "
            f"data left after the JSON header"
        )
    return InferInput(name, datatype, shape, binary[:size]), binary[size:]


def _output(value: Any) -> RequestedOutput:
    output = _object(value, "output")
    name = _string(output, "name", "output")
    what = f"output {quote(name)}"
    return RequestedOutput(name, _flag(_parameters(output, what), "binary_data", what))


def parse_request(
    body: bytes, header_length: str | None, model: str, version: str | None, max_rows: int
) -> InferRequest:
    """The request for `model` at `version` (None: the latest). `max_rows`: the most rows a
    request may carry, which bounds the JSON's cost before it is parsed."""
    header, binary = _header(body, header_length, max_rows)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id: must be a string")
    inputs = []
    for value in _list(header, "inputs", "request"):
        tensor, binary = _input(value, binary)
        inputs.append(tensor)
    if len(binary):
        raise InvalidInput(f"{len(binary)} bytes after the JSON header that no binary_data_size claims")
    parameters = _parameters(header, "request")
    timeout = parameters.get("timeout")
    if timeout is not None and (type(timeout) is not int or timeout <= 0):
        raise InvalidInput("parameter 'timeout': must be a positive number of microseconds")
    return InferRequest(
        model,
        version,
        request_id,
        inputs,
        [_output(value) for value in _list(header, "outputs", "request")],
        _flag(parameters, "binary_data_output", "request"),
        None if timeout is None else timeout / 1e6,
    )


def encode_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: Mapping[str, bool],
) -> tuple[bytes, int | None]:
    """The outputs `binary` names, in its order, each as raw bytes after the JSON when it says so:
    (body, length of its JSON header when binary outputs follow it, else None)."""
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
