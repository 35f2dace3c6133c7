"""Open Inference Protocol messages <-> numpy, with the protocol's rules checked at the edge.

Inputs arrive either as typed `contents` (fp32_contents) or as `raw_input_contents` (one bytes
entry per input, little-endian, row-major); outputs always leave as `raw_output_contents`, as
Triton answers. Every malformed request raises `InvalidInput` naming the tensor and the rule.
"""

from __future__ import annotations

import math

import numpy as np

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve.errors import InvalidInput, quote
from vae_serve.protowire import read_varint
from vae_serve.tensor import FLOAT32_LE, MAX_DIM, MAX_RANK

__all__ = ["MAX_ID_CHARS", "infer_response", "input_array", "wanted_outputs"]

MAX_ID_CHARS = 1024  # a request id is echoed in the response: keep it an id


def _shape(tensor: oip.ModelInferRequest.InferInputTensor, name: str) -> tuple[int, ...]:
    if len(tensor.shape) > MAX_RANK:  # before any copy of the field: it can hold millions
        raise InvalidInput(f"input {name!r}: rank {len(tensor.shape)} is above the supported {MAX_RANK}")
    shape = tuple(tensor.shape)
    if any(d < 0 or d > MAX_DIM for d in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} is not a valid tensor shape")
    return shape


def _fp32_values(contents: oip.InferTensorContents) -> np.ndarray:
    """The packed floats of `fp32_contents`, without a Python-level loop over them: the field alone
    serializes as one tag, a length and the little-endian floats themselves."""
    wire = contents.SerializeToString()
    length, pos = read_varint(wire, 1, len(wire))  # byte 0 is the tag of fp32_contents
    return np.frombuffer(wire, dtype=FLOAT32_LE, count=length // 4, offset=pos)


def input_array(request: oip.ModelInferRequest, model: str, name: str, max_values: int) -> np.ndarray:
    """The one FP32 input `name` of `model`, from raw bytes or typed contents. `max_values`: the
    most values a request may carry, checked before any conversion."""
    if len(request.inputs) != 1 or request.inputs[0].name != name:
        got = ", ".join(quote(t.name) for t in request.inputs[:4]) or "none"
        more = f" and {len(request.inputs) - 4} more" if len(request.inputs) > 4 else ""
        raise InvalidInput(f"{model} takes one input {name!r}, got {got}{more}")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInput(f"input {name!r}: datatype {quote(tensor.datatype)} is not supported; use FP32")
    shape = _shape(tensor, name)
    count = math.prod(shape)
    if count > max_values:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} holds {count} values, over the {max_values} a request "
            f"may carry; send fewer rows"
        )
    if request.raw_input_contents and tensor.HasField("contents"):
        raise InvalidInput(f"input {name!r}: give raw_input_contents or contents, not both")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input"
            )
        raw = request.raw_input_contents[0]
        if len(raw) != 4 * count:
            raise InvalidInput(
                f"input {name!r}: {len(raw)} raw bytes, but FP32 shape {list(shape)} needs {4 * count}"
            )
        data = np.frombuffer(raw, dtype=FLOAT32_LE)
    else:
        contents = tensor.contents
        others = [f.name for f, _ in contents.ListFields() if f.name != "fp32_contents"]
        if others:
            raise InvalidInput(f"input {name!r}: FP32 data belongs in fp32_contents, not {', '.join(others)}")
        if len(contents.fp32_contents) != count:
            raise InvalidInput(
                f"input {name!r}: {len(contents.fp32_contents)} fp32_contents values, "
                f"shape {list(shape)} needs {count}"
            )
        data = _fp32_values(contents) if count else np.zeros(0, dtype=FLOAT32_LE)
    try:
        return data.reshape(shape)
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} cannot be represented ({exc})") from None


def wanted_outputs(request: oip.ModelInferRequest, model: str, available: tuple[str, ...]) -> list[str]:
    """The outputs the request names (all when it names none), checked before any compute."""
    if len(request.id) > MAX_ID_CHARS:
        raise InvalidInput(f"id: {len(request.id)} characters, over the {MAX_ID_CHARS} echoed back")
    wanted = [o.name for o in request.outputs] or list(available)
    if len(set(wanted)) != len(wanted):
        raise InvalidInput(f"outputs requested more than once: {', '.join(map(quote, wanted[:8]))}")
    unknown = [n for n in wanted if n not in available]
    if unknown:
        shown = ", ".join(map(quote, unknown[:4]))
        raise InvalidInput(f"{model} has no output {shown}; outputs: {', '.join(available)}")
    return wanted


def infer_response(
    request: oip.ModelInferRequest,
    model: str,
    version: str,
    outputs: dict[str, np.ndarray],
    wanted: list[str],
) -> oip.ModelInferResponse:
    """The `wanted` outputs, in the order asked, as raw FP32 bytes."""
    response = oip.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    for name in wanted:
        array = np.ascontiguousarray(outputs[name], dtype=FLOAT32_LE)
        response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response
