"""Open Inference Protocol messages over gRPC <-> the typed messages of protocol/oip_messages.py.

Inputs arrive either as typed `contents` (fp32_contents) or as `raw_input_contents` (one bytes
entry per input, little-endian, row-major); outputs always leave as `raw_output_contents`, as
Triton answers. Only what is gRPC's own is checked here (how contents and raw entries pair with
the inputs); every rule of the protocol is the service's.
"""

from __future__ import annotations

import numpy as np

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve.errors import InvalidInput, quote
from vae_serve.protowire import read_varint
from vae_serve.server.protocol.calls import pinned_version
from vae_serve.server.protocol.oip_messages import (
    InferInput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestedOutput,
    TensorMetadata,
)
from vae_serve.tensor import FLOAT32_LE

__all__ = ["infer_request", "infer_response", "model_metadata"]


class _Fp32Contents:
    """Typed contents: FP32 values belong in `fp32_contents`, counted before they are converted."""

    def __init__(self, name: str, contents: oip.InferTensorContents) -> None:
        self.name, self.contents = name, contents

    def count(self) -> int:
        others = [f.name for f, _ in self.contents.ListFields() if f.name != "fp32_contents"]
        if others:
            raise InvalidInput(
                f"input {quote(self.name)}: FP32 data belongs in fp32_contents, not {', '.join(others)}"
            )
        return len(self.contents.fp32_contents)

    def array(self) -> np.ndarray:
        """The packed floats without a Python-level loop over them: the field alone serializes as
        one tag, a length and the little-endian floats themselves."""
        if not self.contents.fp32_contents:
            return np.zeros(0, dtype=FLOAT32_LE)
        wire = self.contents.SerializeToString()
        length, pos = read_varint(wire, 1, len(wire))  # byte 0 is the tag of fp32_contents
        return np.frombuffer(wire, dtype=FLOAT32_LE, count=length // 4, offset=pos)


def _input(tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None) -> InferInput:
    if raw is None:
        data: bytes | _Fp32Contents = _Fp32Contents(tensor.name, tensor.contents)
    elif tensor.HasField("contents"):
        raise InvalidInput(f"input {quote(tensor.name)}: give raw_input_contents or contents, not both")
    else:
        data = raw
    return InferInput(tensor.name, tensor.datatype, tensor.shape, data)


def infer_request(request: oip.ModelInferRequest) -> InferRequest:
    raw, inputs = request.raw_input_contents, request.inputs
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} input{'s' * (len(inputs) != 1)}"
        )
    return InferRequest(
        request.model_name,
        pinned_version(request.model_version),
        request.id,
        [_input(tensor, raw[i] if raw else None) for i, tensor in enumerate(inputs)],
        [RequestedOutput(o.name) for o in request.outputs],
    )


def infer_response(response: InferResponse, reply: oip.ModelInferResponse) -> oip.ModelInferResponse:
    """`reply` filled with the outputs, in the order asked, as raw FP32 bytes (in place: a message
    set into another is copied, and a stream's answer holds its response as a field)."""
    reply.model_name, reply.model_version = response.model, response.version
    if response.id is not None:
        reply.id = response.id
    for name, array in response.outputs.items():
        array = np.ascontiguousarray(array, dtype=FLOAT32_LE)
        reply.outputs.add(name=name, datatype="FP32", shape=array.shape)
        reply.raw_output_contents.append(array.tobytes())
    return reply


def model_metadata(metadata: ModelMetadata) -> oip.ModelMetadataResponse:
    def tensor(t: TensorMetadata) -> oip.ModelMetadataResponse.TensorMetadata:
        return oip.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)

    return oip.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=[tensor(t) for t in metadata.inputs],
        outputs=[tensor(t) for t in metadata.outputs],
    )
