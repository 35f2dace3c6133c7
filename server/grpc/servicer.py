"""The native `vae.v1.VAEService`: proto in, one data-plane call, proto out. Each request names
its model (`model`, empty: the default) and may pin its version."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import grpc
import numpy as np
from google.protobuf.message import Message

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.errors import InvalidInput
from vae_serve.server.models.versions import ServedModel
from vae_serve.server.protocol.calls import deadline_of, named_model, pinned_version
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.protocol.model_info import model_info
from vae_serve.tensor import from_tensor, to_tensor

from .edge import Edge, control_rpc, data_plane_rpc

__all__ = ["VAEServicer"]

_EMPTY = vae_pb2.Tensor()


def _required(message: Message, field: str) -> np.ndarray:
    if not message.HasField(field):
        raise InvalidInput(f"{field}: required")
    return from_tensor(getattr(message, field), field)


def _optional(message: Message, field: str) -> np.ndarray | None:
    return from_tensor(getattr(message, field), field) if message.HasField(field) else None


class _Request(Protocol):
    model: str
    model_version: str


class VAEServicer(vae_pb2_grpc.VAEServiceServicer):
    def __init__(self, dataplane: DataPlane, edge: Edge | None = None) -> None:
        """`edge`: what the call scope records to and admits with; by default the data plane's own."""
        self.dataplane = dataplane
        self.edge = edge if edge is not None else Edge(dataplane.metrics, dataplane.activity)

    def _admit(self, request: _Request) -> ServedModel:
        """The model and version `request` names, resolved and admitted (DataPlane.admit)."""
        return self.dataplane.admit(named_model(request.model), pinned_version(request.model_version))

    @data_plane_rpc
    async def Encode(
        self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.EncodeResponse:
        x = _required(request, "x")
        served = self._admit(request)
        mean, logvar, version = await self.dataplane.encode(x, deadline_of(context), served)
        return vae_pb2.EncodeResponse(mean=to_tensor(mean), logvar=to_tensor(logvar), model_version=version)

    @data_plane_rpc
    async def Decode(
        self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.DecodeResponse:
        z = _required(request, "z")
        served = self._admit(request)
        x, version = await self.dataplane.decode(z, deadline_of(context), served)
        return vae_pb2.DecodeResponse(x=to_tensor(x), model_version=version)

    @data_plane_rpc
    async def Sample(
        self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.SampleResponse:
        z, x, version = await self.dataplane.sample(
            request.num_samples,
            seed=request.seed if request.HasField("seed") else None,
            mean=_optional(request, "mean"),
            logvar=_optional(request, "logvar"),
            decode=request.decode,
            deadline=deadline_of(context),
            served=self._admit(request),
        )
        x_tensor = _EMPTY if x is None else to_tensor(x)
        return vae_pb2.SampleResponse(z=to_tensor(z), x=x_tensor, model_version=version)

    @control_rpc
    async def GetModelInfo(
        self, request: vae_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelInfo:
        served = self._admit(request)
        info = model_info(self.dataplane, served)
        model = info.model
        return vae_pb2.ModelInfo(
            name=model.name,
            version=model.version,
            input_dim=model.input_dim,
            image_shape=model.image_shape,
            latent_dim=model.latent_dim,
            execution_provider=model.execution_provider,
            card=model.card_strings,  # deprecated: model_card replaces it
            model_card=model.card_struct,
            server_id=info.server_id,
            loaded_versions=info.loaded_versions,
            limits=vae_pb2.ServerLimits(**dataclasses.asdict(info.limits)),
        )
