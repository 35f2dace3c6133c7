"""The KServe v2 / Open Inference Protocol front end: `inference.GRPCInferenceService`.

Served on the same port as the native API and over the same data plane, so both share sessions,
batcher, validation, readiness and metrics. Each RPC decodes its message (oip_codec.py), calls the
one OIP service (protocol/oip_service.py, with Triton's extensions) and encodes the answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import json_format

from vae_serve._proto.inference import grpc_predict_v2_pb2 as oip
from vae_serve._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from vae_serve._proto.inference import model_config_pb2 as oip_config
from vae_serve.server.protocol.admin import authorization_of
from vae_serve.server.protocol.calls import deadline_of, pinned_version
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.protocol.oip_extensions import TritonExtensions
from vae_serve.server.protocol.scope import Method

from .edge import Edge, control_rpc, data_plane_rpc
from .oip_codec import infer_request, infer_response, model_metadata
from .registration import Unreadable
from .stream import StreamRules, answer_stream

__all__ = ["OIP_SERVICE", "OipServicer"]

log = logging.getLogger(__name__)

OIP_SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_STREAM = Method("ModelStreamInfer", "grpc", log, work=True)


class OipServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, dataplane: DataPlane, edge: Edge | None = None, service: TritonExtensions | None = None
    ) -> None:
        """`edge`: what the call scope records to and admits with; by default the data plane's
        own. `service`: the OIP service, by default with statistics of this process alone."""
        self.edge = edge if edge is not None else Edge(dataplane.metrics, dataplane.activity)
        self.service = service if service is not None else TritonExtensions(dataplane)
        self._stream_rules = StreamRules(
            _STREAM, self._streamed, _refusal, dataplane.limits.max_message_bytes
        )

    @control_rpc
    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @control_rpc
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.service.ready)

    @control_rpc
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        ready = self.service.model_ready(request.name, pinned_version(request.version))
        return oip.ModelReadyResponse(ready=ready)

    @control_rpc
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        metadata = self.service.server_metadata()
        return oip.ServerMetadataResponse(
            name=metadata.name, version=metadata.version, extensions=metadata.extensions
        )

    @control_rpc
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        return model_metadata(self.service.model_metadata(request.name, pinned_version(request.version)))

    @data_plane_rpc
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        return await self._infer(request, deadline_of(context), oip.ModelInferResponse())

    async def ModelStreamInfer(
        self,
        requests: AsyncIterator[oip.ModelInferRequest | Unreadable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        """Each request on the stream in its own call scope (stream.py), answered as computed."""
        async for response in answer_stream(requests, context, self.edge, self._stream_rules):
            yield response

    async def _streamed(
        self, request: oip.ModelInferRequest, deadline: float | None
    ) -> oip.ModelStreamInferResponse:
        response = oip.ModelStreamInferResponse()
        await self._infer(request, deadline, response.infer_response)  # written in place, uncopied
        return response

    async def _infer(
        self, request: oip.ModelInferRequest, deadline: float | None, reply: oip.ModelInferResponse
    ) -> oip.ModelInferResponse:
        return infer_response(await self.service.infer(infer_request(request), deadline), reply)

    @control_rpc
    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        config = self.service.config(request.name, pinned_version(request.version))
        return oip.ModelConfigResponse(config=json_format.ParseDict(config, oip_config.ModelConfig()))

    @control_rpc
    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        stats = await self.service.statistics(request.name, request.version)
        return oip.ModelStatisticsResponse(model_stats=[oip.ModelStatistics(**s) for s in stats])

    @control_rpc
    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        entries = await self.service.index(request.ready)
        index = oip.RepositoryIndexResponse.ModelIndex
        return oip.RepositoryIndexResponse(models=[index(**entry) for entry in entries])

    @control_rpc
    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelLoadResponse:
        await self.service.load(request.model_name, authorization_of(context.invocation_metadata()))
        return oip.RepositoryModelLoadResponse()

    @control_rpc
    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelUnloadResponse:
        await self.service.unload(request.model_name, authorization_of(context.invocation_metadata()))
        return oip.RepositoryModelUnloadResponse()


def _refusal(
    request: oip.ModelInferRequest | Unreadable, code: grpc.StatusCode, message: str
) -> oip.ModelStreamInferResponse:
    """Why a request was not answered, as Triton says it (a message, no code), with what identifies
    it (an unreadable one has nothing)."""
    if isinstance(request, Unreadable):
        return oip.ModelStreamInferResponse(error_message=message)
    response = oip.ModelInferResponse(model_name=request.model_name[:256], id=request.id[:1024])
    response.model_version = request.model_version[:64]
    return oip.ModelStreamInferResponse(error_message=message, infer_response=response)
