"""The KServe v2 / Open Inference Protocol front end: `inference.GRPCInferenceService`.

Served on the same port as the native API and over the same data plane, so both share sessions,
batcher, validation, readiness and metrics. Two models are exposed: `vae_encoder` (x -> mean,
logvar) and `vae_decoder` (z -> x), at the version the server serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from vae_serve import __version__
from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve.errors import ModelNotFound, quote

from .dataplane import DataPlane
from .oip_codec import infer_response, input_array, wanted_outputs
from .servicer import deadline_of
from .status import rpc
from .versions import ServedModel

__all__ = ["OIP_SERVICE", "OipServicer"]

OIP_SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass(frozen=True)
class _OipModel:
    """One model as OIP exposes it: the data-plane method behind it, and each tensor's width
    (the LoadedModel attribute that gives it)."""

    method: str
    input: tuple[str, str]
    outputs: tuple[tuple[str, str], ...]


GRAPHS = {
    "vae_encoder": _OipModel(
        "encode", ("x", "input_dim"), (("mean", "latent_dim"), ("logvar", "latent_dim"))
    ),
    "vae_decoder": _OipModel("decode", ("z", "latent_dim"), (("x", "input_dim"),)),
}


class OipServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def _resolve(self, model: str, version: str) -> ServedModel:
        if model not in GRAPHS:
            raise ModelNotFound(f"no model {quote(model)}; models: {', '.join(GRAPHS)}")
        return self.dataplane.current(version)

    @rpc("ServerLive")
    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.dataplane.ready)

    @rpc("ModelReady")
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        if not self.dataplane.ready:
            return oip.ModelReadyResponse(ready=False)
        self._resolve(request.name, request.version)
        return oip.ModelReadyResponse(ready=True)

    @rpc("ServerMetadata")
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name="vae-serve", version=__version__, extensions=[])

    @rpc("ModelMetadata")
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        served = self._resolve(request.name, request.version)
        graph = GRAPHS[request.name]

        def meta(tensor: tuple[str, str]) -> oip.ModelMetadataResponse.TensorMetadata:
            name, width = tensor
            shape = [-1, getattr(served.model, width)]
            return oip.ModelMetadataResponse.TensorMetadata(name=name, datatype="FP32", shape=shape)

        return oip.ModelMetadataResponse(
            name=request.name,
            versions=self.dataplane.versions.versions,
            platform="onnxruntime_onnx",
            inputs=[meta(graph.input)],
            outputs=[meta(tensor) for tensor in graph.outputs],
        )

    @rpc("ModelInfer", work=True)
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        served = self._resolve(request.model_name, request.model_version)
        graph = GRAPHS[request.model_name]
        names = tuple(name for name, _ in graph.outputs)
        wanted = wanted_outputs(request, request.model_name, names)
        max_values = self.dataplane.limits.max_request_rows * getattr(served.model, graph.input[1])
        array = input_array(request, request.model_name, graph.input[0], max_values)
        run = getattr(self.dataplane, graph.method)  # encode or decode: same validation, batcher, metrics
        *values, version = await run(array, deadline_of(context), served.version)
        outputs = dict(zip(names, values, strict=True))
        return infer_response(request, request.model_name, version, outputs, wanted)
