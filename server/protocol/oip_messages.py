"""The Open Inference Protocol's messages as plain types, free of any transport.

The gRPC codec (grpc/oip_codec.py) and the REST one (http/kserve_codec.py) build an `InferRequest`
from their wire forms and write the answers back to them; every rule in between is the service's
(oip_service.py), so both transports answer the same request alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "InferInput",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "Raw",
    "RequestedOutput",
    "ServerMetadata",
    "TensorMetadata",
    "Values",
]

Raw = bytes | memoryview  # little-endian bytes: gRPC's raw_input_contents, Triton's binary data


class Values(Protocol):
    """An input's values carried in the message itself: gRPC's typed contents, or JSON's `data`."""

    def count(self) -> int:
        """How many values there are, known before they are converted; raises InvalidInput for
        values of another type than FP32."""
        ...

    def array(self) -> np.ndarray:
        """The values as float32, flat."""
        ...


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str
    shape: Sequence[int]  # as sent: its length is read before it is copied (it can hold millions)
    data: Raw | Values


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False  # Triton's `binary_data`: the REST reply carries it as raw bytes


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str | None  # None: the latest
    id: str | None
    inputs: Sequence[InferInput]
    outputs: Sequence[RequestedOutput] = ()  # none named: every output
    binary_outputs: bool = False  # Triton's `binary_data_output`: every output as raw bytes
    timeout_s: float | None = None  # Triton's `timeout` parameter, in seconds

    def binary(self, output: str) -> bool:
        """Whether the REST reply carries `output` as raw bytes after its JSON."""
        return self.binary_outputs or any(o.binary for o in self.outputs if o.name == output)


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    id: str | None
    outputs: dict[str, np.ndarray]  # float32, in the order asked


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]  # -1 for the batch dimension


@dataclass(frozen=True)
class ModelMetadata:
    """Field for field the protocol's ModelMetadataResponse (and its REST JSON)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]
