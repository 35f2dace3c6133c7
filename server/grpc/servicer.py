"""The native `vae.v1.VAEService`: proto in, one data-plane call, proto out. Each request names
its model (`model`, empty: the default) and may pin its version. `Stream` answers the same three
requests, many on one call (stream.py), each exactly as its unary call would."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
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
from vae_serve.server.protocol.scope import Method
from vae_serve.tensor import fill_tensor, from_tensor

from .edge import Edge, control_rpc, data_plane_rpc
from .registration import Unreadable
from .stream import StreamRules, answer_stream

__all__ = ["MAX_STREAM_ID_CHARS", "VAEServicer"]

log = logging.getLogger(__name__)

MAX_STREAM_ID_CHARS = 256
_STREAM = Method("Stream", "grpc", log, work=True)


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
        self._stream_rules = StreamRules(
            _STREAM, self._streamed, _refusal, dataplane.limits.max_message_bytes
        )

    def _admit(self, request: _Request) -> ServedModel:
        """The model and version `request` names, resolved and admitted (DataPlane.admit)."""
        return self.dataplane.admit(named_model(request.model), pinned_version(request.model_version))

    @data_plane_rpc
    async def Encode(
        self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.EncodeResponse:
        return await self._encode(request, deadline_of(context), vae_pb2.EncodeResponse())

    @data_plane_rpc
    async def Decode(
        self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.DecodeResponse:
        return await self._decode(request, deadline_of(context), vae_pb2.DecodeResponse())

    @data_plane_rpc
    async def Sample(
        self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.SampleResponse:
        return await self._sample(request, deadline_of(context), vae_pb2.SampleResponse())

    async def Stream(
        self,
        requests: AsyncIterator[vae_pb2.StreamRequest | Unreadable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[vae_pb2.StreamResponse]:
        """Each request on the stream in its own call scope (stream.py), answered as computed."""
        async for response in answer_stream(requests, context, self.edge, self._stream_rules):
            yield response

    # Each call writes its answer into the reply it is given: a stream's answer holds it, uncopied.
    async def _encode(
        self, request: vae_pb2.EncodeRequest, deadline: float | None, reply: vae_pb2.EncodeResponse
    ) -> vae_pb2.EncodeResponse:
        x = _required(request, "x")
        mean, logvar, reply.model_version = await self.dataplane.encode(x, deadline, self._admit(request))
        fill_tensor(reply.mean, mean)
        fill_tensor(reply.logvar, logvar)
        return reply

    async def _decode(
        self, request: vae_pb2.DecodeRequest, deadline: float | None, reply: vae_pb2.DecodeResponse
    ) -> vae_pb2.DecodeResponse:
        z = _required(request, "z")
        x, reply.model_version = await self.dataplane.decode(z, deadline, self._admit(request))
        fill_tensor(reply.x, x)
        return reply

    async def _sample(
        self, request: vae_pb2.SampleRequest, deadline: float | None, reply: vae_pb2.SampleResponse
    ) -> vae_pb2.SampleResponse:
        z, x, reply.model_version = await self.dataplane.sample(
            request.num_samples,
            seed=request.seed if request.HasField("seed") else None,
            mean=_optional(request, "mean"),
            logvar=_optional(request, "logvar"),
            decode=request.decode,
            deadline=deadline,
            served=self._admit(request),
        )
        fill_tensor(reply.z, z)
        if x is None:
            reply.x.SetInParent()  # present and empty, as it always was
        else:
            fill_tensor(reply.x, x)
        return reply

    async def _streamed(
        self, request: vae_pb2.StreamRequest, deadline: float | None
    ) -> vae_pb2.StreamResponse:
        if len(request.id) > MAX_STREAM_ID_CHARS:
            raise InvalidInput(f"id: at most {MAX_STREAM_ID_CHARS} characters, got {len(request.id)}")
        response = vae_pb2.StreamResponse(id=request.id)
        call = request.WhichOneof("call")
        if call == "encode":
            await self._encode(request.encode, deadline, response.encode)
        elif call == "decode":
            await self._decode(request.decode, deadline, response.decode)
        elif call == "sample":
            await self._sample(request.sample, deadline, response.sample)
        else:
            raise InvalidInput("call: one of encode, decode or sample is required")
        return response

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


def _refusal(
    request: vae_pb2.StreamRequest | Unreadable, code: grpc.StatusCode, message: str
) -> vae_pb2.StreamResponse:
    """Why a request on the stream has no answer, under its id (an unreadable one has none, and
    an id over the limit is not echoed: cut short, it could be another request's)."""
    rid = ""
    if not isinstance(request, Unreadable) and len(request.id) <= MAX_STREAM_ID_CHARS:
        rid = request.id
    error = vae_pb2.StreamError(code=code.value[0], message=message)
    return vae_pb2.StreamResponse(id=rid, error=error)
