"""A model version loaded into ONNX Runtime, checked against its card and warmed up.

Every check runs before the version can serve, so a graph with other names, widths, a fixed
batch axis or one that fails at run time is rejected at load with a reason, never mid-request.
The card's own checks (types, image_shape against input_dim) were made by `repository.resolve`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from vae_serve.errors import ModelLoadError

from .graph import Graph, choose_providers
from .repository import VersionFiles

__all__ = ["MAX_CARD_DEPTH", "LoadedModel", "load_model", "wire_card"]

# Lists and objects nested in a card, at most: each level is two messages of a Struct, and protobuf
# parsers refuse a message nested 100 deep, so a deeper card would make GetModelInfo unreadable.
MAX_CARD_DEPTH = 32
# The largest integer a double holds exactly: what JSON readers (Struct, JavaScript) keep of a number.
_EXACT_INTEGER = 2**53


@dataclass(frozen=True)
class LoadedModel:
    files: VersionFiles
    encoder: Graph
    decoder: Graph
    input_dim: int
    latent_dim: int
    image_shape: tuple[int, ...]
    execution_provider: str
    card_strings: dict[str, str] = field(default_factory=dict)  # the deprecated string map of GetModelInfo
    # The card as both front ends send it, typed (wire_card): JSON over HTTP, a Struct over gRPC.
    card: dict[str, Any] = field(default_factory=dict)
    card_struct: struct_pb2.Struct = field(default_factory=struct_pb2.Struct)

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def version(self) -> str:
        return self.files.version


def _check_signature(graph: Graph, input_name: str, width: int, outputs: dict[str, int]) -> None:
    def describe(shape: list) -> str:
        return "[" + ", ".join(str(d) for d in shape) + "]"

    if graph.input_name != input_name:
        raise ModelLoadError(f"{graph.path}: input is {graph.input_name!r}, expected {input_name!r}")
    expected_io = {graph.input_name: (graph.input_shape, width)}
    if set(graph.outputs) != set(outputs):
        raise ModelLoadError(f"{graph.path}: outputs are {sorted(graph.outputs)}, expected {sorted(outputs)}")
    expected_io |= {name: (graph.outputs[name], w) for name, w in outputs.items()}
    for name, (shape, w) in expected_io.items():
        if len(shape) != 2 or shape[1] != w:
            raise ModelLoadError(f"{graph.path}: {name!r} has shape {describe(shape)}, expected [batch, {w}]")
        if isinstance(shape[0], int):
            raise ModelLoadError(
                f"{graph.path}: {name!r} has a fixed batch axis {shape[0]}; export it dynamic"
            )


def _warm_up(graph: Graph, width: int) -> None:
    """One real run at batch 1 and 3, so kernels are chosen and run-time failures surface now."""
    for rows in (1, 3):
        try:
            results = graph.run(np.full((rows, width), 0.5, dtype=np.float32))
        except Exception as exc:  # ORT raises its own exception types
            raise ModelLoadError(f"{graph.path}: warm-up run failed ({type(exc).__name__}: {exc})") from None
        for value in results:
            if value.shape[0] != rows or not np.isfinite(value).all():
                raise ModelLoadError(f"{graph.path}: warm-up produced a wrong or non-finite output")


def load_model(files: VersionFiles, device: str, intra_op_threads: int) -> LoadedModel:
    """The version in ONNX Runtime, from the graph bytes its card was verified against."""
    spec = files.spec
    input_dim, latent_dim, image_shape = spec.input_dim, spec.latent_dim, tuple(spec.image_shape)
    card = wire_card(files.card, files.path / "model.json")  # before ORT: a bad card costs nothing
    providers = choose_providers(device)
    encoder = Graph(
        files.graph("encoder.onnx"), providers, intra_op_threads, device, files.take_graph("encoder.onnx")
    )
    decoder = Graph(
        files.graph("decoder.onnx"), providers, intra_op_threads, device, files.take_graph("decoder.onnx")
    )
    _check_signature(encoder, "x", input_dim, {"mean": latent_dim, "logvar": latent_dim})
    _check_signature(decoder, "z", latent_dim, {"x": input_dim})
    _warm_up(encoder, input_dim)
    _warm_up(decoder, latent_dim)
    used = {encoder.provider, decoder.provider}
    provider = used.pop() if len(used) == 1 else f"encoder:{encoder.provider},decoder:{decoder.provider}"
    card_strings = {
        k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in files.card.items()
    }
    card_struct = struct_pb2.Struct()
    card_struct.update(card)
    return LoadedModel(
        files, encoder, decoder, input_dim, latent_dim, image_shape, provider, card_strings, card, card_struct
    )


def wire_card(card: dict[str, Any], where: object) -> dict[str, Any]:
    """`card` with every value of its own type, as both front ends send it: an integer beyond what
    a double holds exactly becomes its decimal string, which JSON readers would otherwise round.
    Raises ModelLoadError for a card nested deeper than MAX_CARD_DEPTH."""

    def plain(value: Any, depth: int) -> Any:
        if isinstance(value, dict | list):
            if depth >= MAX_CARD_DEPTH:
                raise ModelLoadError(f"{where}: nested deeper than {MAX_CARD_DEPTH} levels")
            if isinstance(value, dict):
                return {k: plain(v, depth + 1) for k, v in value.items()}
            return [plain(v, depth + 1) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _EXACT_INTEGER:
            return str(value)
        return value

    return plain(card, 0)
