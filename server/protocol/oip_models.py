"""The two models the Open Inference Protocol exposes, as both its front ends (gRPC in oip.py,
HTTP in http/kserve.py) see them: the data-plane call behind each, and its tensors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from vae_serve.server.models.model import LoadedModel

from .dataplane import DataPlane

__all__ = ["GRAPHS", "OipModel", "OipTensor", "Outputs"]


Outputs = tuple[tuple[np.ndarray, ...], str]  # the output arrays in order, and the version used
# A data-plane call as OIP makes it: (plane, input, deadline, pinned version) -> outputs.
OipRun = Callable[[DataPlane, np.ndarray, float | None, str | None], Awaitable[Outputs]]


@dataclass(frozen=True)
class OipTensor:
    name: str
    width: Callable[[LoadedModel], int]  # columns of the [-1, width] tensor, from the model served


@dataclass(frozen=True)
class OipModel:
    """One model as OIP exposes it: the data-plane call behind it, the graph that call runs
    (`encoder` or `decoder`: its label in the metrics, its attribute of LoadedModel), and its tensors."""

    run: OipRun
    graph: str
    input: OipTensor
    outputs: tuple[OipTensor, ...]


async def _encode(plane: DataPlane, x: np.ndarray, deadline: float | None, version: str | None) -> Outputs:
    mean, logvar, used = await plane.encode(x, deadline, version)
    return (mean, logvar), used


async def _decode(plane: DataPlane, z: np.ndarray, deadline: float | None, version: str | None) -> Outputs:
    x, used = await plane.decode(z, deadline, version)
    return (x,), used


def _input_dim(model: LoadedModel) -> int:
    return model.input_dim


def _latent_dim(model: LoadedModel) -> int:
    return model.latent_dim


GRAPHS = {
    "vae_encoder": OipModel(
        _encode,
        "encoder",
        OipTensor("x", _input_dim),
        (OipTensor("mean", _latent_dim), OipTensor("logvar", _latent_dim)),
    ),
    "vae_decoder": OipModel(_decode, "decoder", OipTensor("z", _latent_dim), (OipTensor("x", _input_dim),)),
}
