"""Open Inference Protocol messages <-> numpy, with the protocol's rules checked at the edge.

Inputs arrive either as typed `contents` (fp32_contents) or as `raw_input_contents` (one bytes
entry per input, little-endian, row-major); outputs always leave as `raw_output_contents`, as
Triton answers. Every malformed request raises `InvalidInput` naming the tensor and the rule.
"""

from __future__ import annotations

import math

import numpy as np

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve.errors import InvalidInput
from vae_serve.tensor import FLOAT32_LE, MAX_DIM, MAX_RANK

__all__ = ["infer_response", "input_array"]


def _shape(tensor: oip.ModelInferRequest.InferInputTensor) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 or d > MAX_DIM for d in shape):
        raise InvalidInput(f"input {tensor.name!r}: shape {list(shape)} is not a valid tensor shape")
    return shape


def input_array(request: oip.ModelInferRequest, model: str, name: str) -> np.ndarray:
    """The one FP32 input `name` of `model`, from raw bytes or typed contents."""
    names = [t.name for t in request.inputs]
    if names != [name]:
        raise InvalidInput(f"{model} takes one input {name!r}, got {names or 'none'}")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInput(
            f"input {name!r}: datatype {tensor.datatype or '(empty)'} is not supported; use FP32"
        )
    shape = _shape(tensor)
    count = math.prod(shape)
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
        data = np.asarray(contents.fp32_contents, dtype=np.float32)
    try:
        return data.reshape(shape)
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} cannot be represented ({exc})") from None


def infer_response(
    request: oip.ModelInferRequest, model: str, version: str, outputs: dict[str, np.ndarray]
) -> oip.ModelInferResponse:
    """The requested outputs (all when none are named), in the order asked, as raw FP32 bytes."""
    wanted = [o.name for o in request.outputs] or list(outputs)
    if len(set(wanted)) != len(wanted):
        raise InvalidInput(f"outputs requested more than once: {wanted}")
    unknown = [n for n in wanted if n not in outputs]
    if unknown:
        raise InvalidInput(
            f"{model} has no output {', '.join(map(repr, unknown))}; outputs: {', '.join(outputs)}"
        )
    response = oip.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    for name in wanted:
        array = np.ascontiguousarray(outputs[name], dtype=FLOAT32_LE)
        response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response
