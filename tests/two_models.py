"""A model repository of two tiny models of different shapes, for the tests of several models
served at once: `grey` ([2, 3] images, 2 latents) and `rgb` ([2, 2, 3] images, 3 latents)."""

from __future__ import annotations

from pathlib import Path

from support import write_version_files

GREY, RGB = "grey", "rgb"
# Per model: input width, latent width, image shape, and what its decoder makes of z = ones
# (each output is sum(z) * fill): tells the two models' answers apart.
SHAPES = {GREY: (6, 2, (2, 3)), RGB: (12, 3, (2, 2, 3))}
FILLS = {GREY: 0.1, RGB: 0.25}


def decoded_ones(model: str) -> float:
    """Each value the decoder of `model` gives for a z of ones."""
    return SHAPES[model][1] * FILLS[model]


def write_model(root: Path, model: str, version: str = "1") -> Path:
    """`root/model/version/`: the graphs and card of `model` (GREY or RGB)."""
    width, latent, shape = SHAPES[model]
    encoder = {"input_name": "x", "width": width, "outputs": {"mean": latent, "logvar": latent}}
    decoder = {"input_name": "z", "width": latent, "outputs": {"x": width}, "fill": FILLS[model]}
    return write_version_files(root, encoder, decoder, width, latent, shape, model=model, version=version)


def two_models(root: Path) -> Path:
    """`root` with version 1 of both models."""
    for model in SHAPES:
        write_model(root, model)
    return root
