"""The native API's GetModelInfo, built once: gRPC (servicer.py) and REST (`/v1/model`,
`/v1/models/{model}`) encode it; and the list of models served (`/v1/models`)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from vae_serve.server.models.model import LoadedModel
from vae_serve.server.models.versions import ServedModel

from .dataplane import DataPlane

__all__ = ["Limits", "ModelInfo", "ModelSummary", "model_info", "models_served"]


@dataclass(frozen=True)
class Limits:
    """What one request may carry: vae.proto's ServerLimits."""

    max_request_rows: int
    max_samples: int
    max_message_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    """The version a request resolved, every version served of its model, the process answering
    (`host:pid`, which tells workers apart) and the limits a request must keep."""

    model: LoadedModel
    loaded_versions: list[str]
    server_id: str
    limits: Limits


def model_info(plane: DataPlane, served: ServedModel) -> ModelInfo:
    """The info of `served`, as `plane.admit` resolved it."""
    limits = plane.limits
    return ModelInfo(
        served.model,
        plane.models.versions(served.model.name).loaded,
        f"{socket.gethostname()}:{os.getpid()}",  # per call: workers are forked
        Limits(limits.max_request_rows, limits.max_samples, limits.max_message_bytes),
    )


@dataclass(frozen=True)
class ModelSummary:
    """One model served, as a list of models shows it: enough to pick one and draw its images."""

    name: str
    version: str  # the latest
    loaded_versions: list[str]
    input_dim: int
    latent_dim: int
    image_shape: list[int]
    default: bool  # it answers requests that name no model


def models_served(plane: DataPlane) -> list[ModelSummary]:
    """Every model served, by name; admits nothing (a listing computes nothing)."""
    default = plane.models.default
    summaries = []
    for entry in plane.models.entries:
        latest = entry.versions.latest
        if latest is None:  # its first version is still loading
            continue
        model = latest.model
        summaries.append(
            ModelSummary(
                entry.name,
                model.version,
                entry.versions.loaded,
                model.input_dim,
                model.latent_dim,
                list(model.image_shape),
                entry.name == default,
            )
        )
    return summaries
