"""The KServe v2 / Open Inference Protocol front end: `inference.GRPCInferenceService`.

Served on the same port as the native API and over the same data plane, so both share sessions,
batcher, validation, readiness and metrics. Two models are exposed: `vae_encoder` (x -> mean,
logvar) and `vae_decoder` (z -> x), at the version the server serves.
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from vae_serve import __version__
from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.inference import model_config_pb2 as oip_config
from vae_serve.errors import ModelNotFound, quote
from vae_serve.server.models.versions import ServedModel
from vae_serve.server.protocol.calls import deadline_of, pinned_version
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.protocol.oip_extensions import EXTENSIONS, TritonExtensions, model_control_refused
from vae_serve.server.protocol.oip_models import GRAPHS, OipTensor

from .edge import Edge, control_rpc, data_plane_rpc
from .oip_codec import infer_response, input_array, wanted_outputs

__all__ = ["OIP_SERVICE", "OipServicer"]

OIP_SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class OipServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, dataplane: DataPlane, edge: Edge | None = None, extensions: TritonExtensions | None = None
    ) -> None:
        """`edge`: where the rpc wrapper records and admits; by default the data plane's own.
        `extensions`: Triton's, by default over this process's metrics alone."""
        self.dataplane = dataplane
        self.edge = edge if edge is not None else Edge(dataplane.metrics, dataplane.activity)
        self.extensions = extensions if extensions is not None else TritonExtensions(dataplane)

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
        return oip.ServerMetadataResponse(name="vae-serve", version=__version__, extensions=EXTENSIONS)

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

    @control_rpc
    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        config = self.extensions.config(request.name, request.version)
        return oip.ModelConfigResponse(config=json_format.ParseDict(config, oip_config.ModelConfig()))

    @control_rpc
    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        stats = await self.extensions.statistics(request.name, request.version)
        return oip.ModelStatisticsResponse(model_stats=[oip.ModelStatistics(**s) for s in stats])

    @control_rpc
    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        entries = await self.extensions.index(request.ready)
        index = oip.RepositoryIndexResponse.ModelIndex
        return oip.RepositoryIndexResponse(models=[index(**entry) for entry in entries])

    @control_rpc
    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelLoadResponse:
        raise model_control_refused()

    @control_rpc
    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelUnloadResponse:
        raise model_control_refused()
