"""The native API's GetModelInfo, built once: gRPC (servicer.py) and REST (`/v1/model`) encode it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from vae_serve.server.models.model import LoadedModel
from vae_serve.server.models.versions import ServedModel

from .dataplane import DataPlane

__all__ = ["Limits", "ModelInfo", "model_info"]


@dataclass(frozen=True)
class Limits:
    """What one request may carry: vae.proto's ServerLimits."""

    max_request_rows: int
    max_samples: int
    max_message_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    """The version a request resolved, every version served, the process answering (`host:pid`,
    which tells workers apart) and the limits a request must keep."""

    model: LoadedModel
    loaded_versions: list[str]
    server_id: str
    limits: Limits


def model_info(plane: DataPlane, served: ServedModel) -> ModelInfo:
    """The info of `served`, as `plane.admit` resolved it."""
    limits = plane.limits
    return ModelInfo(
        served.model,
        plane.models.versions().loaded,
        f"{socket.gethostname()}:{os.getpid()}",  # per call: workers are forked
        Limits(limits.max_request_rows, limits.max_samples, limits.max_message_bytes),
    )
