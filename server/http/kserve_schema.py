"""KServe v2 REST (Open Inference Protocol) messages as pydantic models, for the OpenAPI document
alone: the routes (kserve.py) read and write their JSON directly.

Field for field the protocol's, as the KServe SDK models it (`kserve.protocol.rest.v2_datamodels`,
which the tests hold the replies to), but for two things the published spec allows and Triton
does: a response's `id` only when the request gave one, and binary tensor data (a tensor's `data`
left out, its bytes after the JSON); plus the replies of Triton's extensions (oip_extensions.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ErrorResponse",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "ModelMetadataResponse",
    "ModelReadyResponse",
    "ModelStatisticsResponse",
    "RepositoryIndexRequest",
    "RepositoryModel",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerLiveResponse",
    "ServerMetadataResponse",
    "ServerReadyResponse",
]

Parameters = dict[str, bool | int | float | str]
BINARY = "Left out when the tensor's bytes follow the JSON (parameters.binary_data_size says how many)."


class ErrorResponse(BaseModel):
    """Every refusal, of either API: one line saying why."""

    error: str


class ServerLiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    """When not ready, the answer is a 503 with an error instead."""

    ready: bool


class ModelReadyResponse(BaseModel):
    """When not ready, the answer is a 503 with an error instead."""

    name: str
    ready: bool


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="Triton's names for the protocol extensions served.")


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the batch dimension.")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] | None = Field(None, description="The versions served, oldest first.")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    name: str
    shape: list[int] = Field(description="[rows, columns].")
    datatype: str = Field(description="FP32.")
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description=f"Row-major values, flat or nested. {BINARY}")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = Field(None, description='{"binary_data": true} for raw bytes.')


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="Returned in the response.")
    parameters: Parameters | None = Field(
        None, description='Triton\'s "binary_data_output" and "timeout" (microseconds) are read.'
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="Default: every output.")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[float] | None = Field(None, description=f"Row-major values, flat. {BINARY}")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = Field(None, description="The request's id, when it gave one.")
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(BaseModel):
    """Optional: no body lists every version."""

    ready: bool = Field(False, description="List only the versions ready for inference.")


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY or UNAVAILABLE.")
    reason: str = Field(description="Why a version is unavailable; empty when ready.")


class ModelStatisticsResponse(BaseModel):
    model_stats: list[dict[str, Any]] = Field(description="Triton's ModelStatistics, per model version.")
