"""The KServe v2 / Open Inference Protocol front end: `inference.GRPCInferenceService`.

Served on the same port as the native API and over the same data plane, so both share sessions,
batcher, validation, readiness and metrics. Two models are exposed: `vae_encoder` (x -> mean,
logvar) and `vae_decoder` (z -> x), at the version the server serves.
"""

from __future__ import annotations

import grpc

from vae_serve import __version__
from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve.errors import ModelNotFound, quote

from .calls import deadline_of, pinned_version
from .dataplane import DataPlane
from .edge import Edge, control_rpc, data_plane_rpc
from .oip_codec import infer_response, input_array, wanted_outputs
from .oip_models import GRAPHS, OipTensor
from .versions import ServedModel

__all__ = ["OIP_SERVICE", "OipServicer"]

OIP_SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class OipServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, edge: Edge | None = None) -> None:
        """`edge`: where the rpc wrapper records and admits; by default the data plane's own."""
        self.dataplane = dataplane
        self.edge = edge if edge is not None else Edge(dataplane.metrics, dataplane.activity)

    def _resolve(self, model: str, version: str) -> ServedModel:
        if model not in GRAPHS:
            raise ModelNotFound(f"no model {quote(model)}; models: {', '.join(GRAPHS)}")
        return self.dataplane.current(pinned_version(version))

    @control_rpc
    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @control_rpc
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.dataplane.ready)

    @control_rpc
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        if not self.dataplane.ready:
            return oip.ModelReadyResponse(ready=False)
        self._resolve(request.name, request.version)
        return oip.ModelReadyResponse(ready=True)

    @control_rpc
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name="vae-serve", version=__version__, extensions=[])

    @control_rpc
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        served = self._resolve(request.name, request.version)
        graph = GRAPHS[request.name]

        def meta(tensor: OipTensor) -> oip.ModelMetadataResponse.TensorMetadata:
            shape = [-1, tensor.width(served.model)]
            return oip.ModelMetadataResponse.TensorMetadata(name=tensor.name, datatype="FP32", shape=shape)

        return oip.ModelMetadataResponse(
            name=request.name,
            versions=self.dataplane.served.loaded,
            platform="onnxruntime_onnx",
            inputs=[meta(graph.input)],
            outputs=[meta(tensor) for tensor in graph.outputs],
        )

    @data_plane_rpc
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        served = self._resolve(request.model_name, request.model_version)
        graph = GRAPHS[request.model_name]
        names = tuple(tensor.name for tensor in graph.outputs)
        wanted = wanted_outputs(request, request.model_name, names)
        max_values = self.dataplane.limits.max_request_rows * graph.input.width(served.model)
        array = input_array(request, request.model_name, graph.input.name, max_values)
        # encode or decode: the same validation, batcher and metrics as the native API
        values, version = await graph.run(self.dataplane, array, deadline_of(context), served.version)
        outputs = dict(zip(names, values, strict=True))
        return infer_response(request, request.model_name, version, outputs, wanted)
