"""The Open Inference Protocol, once for both transports: readiness, model metadata and inference
on the typed messages of oip_messages.py, over the data plane.

The gRPC servicer (grpc/oip.py) and the REST routes (http/kserve.py) only decode their wire form,
call this, and encode the answer; Triton's extensions add to it (oip_extensions.py), and that
one object is what both front ends hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vae_serve.server.models.versions import ServedModel

from .dataplane import DataPlane
from .oip_checks import check_id, input_array, wanted_outputs
from .oip_messages import InferRequest, InferResponse, ModelMetadata, TensorMetadata
from .oip_models import OipModel, OipTensor

__all__ = ["Inference", "OipService"]

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class Inference:
    """A request resolved, admitted and checked, its input converted: what is left is to run it."""

    request: InferRequest
    model: OipModel
    served: ServedModel
    array: np.ndarray  # the input, [rows, columns]
    outputs: list[str]  # in the order asked

    @property
    def text_values(self) -> int:
        """How many numbers the reply holds as text: the outputs not asked as binary data."""
        widths = {t.name: t.width(self.served.model) for t in self.model.outputs}
        return len(self.array) * sum(widths[n] for n in self.outputs if not self.request.binary(n))


class OipService:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def _resolve(self, name: str, version: str | None) -> tuple[OipModel, ServedModel]:
        """The OIP model `name` (a graph of a model served) and its version, once per request
        (`DataPlane.admit`)."""
        entry, model = self.dataplane.models.oip(name)
        return model, self.dataplane.admit(entry.name, version or None)

    @property
    def ready(self) -> bool:
        return self.dataplane.ready

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """False while the server is not ready; else True, or why the model is not found."""
        if not self.ready:
            return False
        self._resolve(name, version)
        return True

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        model, served = self._resolve(name, version)

        def tensor(t: OipTensor) -> TensorMetadata:
            return TensorMetadata(t.name, "FP32", [-1, t.width(served.model)])

        versions = self.dataplane.models.versions(served.model.name).loaded
        outputs = [tensor(t) for t in model.outputs]
        return ModelMetadata(name, versions, PLATFORM, [tensor(model.input)], outputs)

    def prepare(self, request: InferRequest) -> Inference:
        """Resolve, admit and check `request` and convert its input, before any compute."""
        model, served = self._resolve(request.model, request.version)
        check_id(request.id)
        outputs = wanted_outputs(request, request.model, model.output_names)
        max_values = self.dataplane.limits.max_request_rows * model.input.width(served.model)
        array = input_array(request, request.model, model.input.name, max_values)
        return Inference(request, model, served, array, outputs)

    async def run(self, inference: Inference, deadline: float | None) -> InferResponse:
        """Encode or decode: the same validation, batcher and metrics as the native API.
        `deadline` (time.monotonic() seconds): past it, queued work is dropped."""
        model, served = inference.model, inference.served
        values = await model.run(self.dataplane, inference.array, deadline, served)
        computed = dict(zip(model.output_names, values, strict=True))
        request = inference.request
        outputs = {name: computed[name] for name in inference.outputs}
        return InferResponse(request.model, served.version, request.id, outputs)

    async def infer(self, request: InferRequest, deadline: float | None) -> InferResponse:
        return await self.run(self.prepare(request), deadline)
