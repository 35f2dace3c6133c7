"""What the Open Inference Protocol exposes of each model served: its two graphs as two OIP models,
`<model>_encoder` and `<model>_decoder` (the registry resolves the names), with the data-plane
call behind each and its tensors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vae_serve.server.models.model import LoadedModel
from vae_serve.server.models.versions import ServedModel

if TYPE_CHECKING:  # the data plane names these models in its registry: only its type is needed here
    from .dataplane import DataPlane

__all__ = ["OIP_GRAPHS", "OipModel", "OipTensor", "oip_name"]


# A data-plane call as OIP makes it: (plane, input, deadline, the version resolved) -> outputs.
OipRun = Callable[["DataPlane", np.ndarray, float | None, ServedModel], Awaitable[tuple[np.ndarray, ...]]]


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

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


async def _encode(
    plane: DataPlane, x: np.ndarray, deadline: float | None, served: ServedModel
) -> tuple[np.ndarray, ...]:
    mean, logvar, _ = await plane.encode(x, deadline, served)
    return mean, logvar


async def _decode(
    plane: DataPlane, z: np.ndarray, deadline: float | None, served: ServedModel
) -> tuple[np.ndarray, ...]:
    x, _ = await plane.decode(z, deadline, served)
    return (x,)


def _input_dim(model: LoadedModel) -> int:
    return model.input_dim


def _latent_dim(model: LoadedModel) -> int:
    return model.latent_dim


# By graph: what `<model>_<graph>` is over OIP, in the order every listing names them.
OIP_GRAPHS = {
    "encoder": OipModel(
        _encode,
        "encoder",
        OipTensor("x", _input_dim),
        (OipTensor("mean", _latent_dim), OipTensor("logvar", _latent_dim)),
    ),
    "decoder": OipModel(_decode, "decoder", OipTensor("z", _latent_dim), (OipTensor("x", _input_dim),)),
}


def oip_name(model: str, graph: str) -> str:
    """The OIP model that is `graph` of `model`: `fashion-vae_decoder`."""
    return f"{model}_{graph}"
