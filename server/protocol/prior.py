"""Sample's prior draws, from the prior the model was trained with, as its card records it.

A card without `prior`, or with `{"type": "standard_normal"}`, gets N(0, I): the very draws
`rng.standard_normal` always gave, so a seed still gives the same grid for such a model. A card
with `{"type": "mixture_of_gaussians", "weights": [K], "means": [K][L], "logvars": [K][L]}`
(what `vae-train --prior mog` writes) gets a component per draw by its weight, then
z = means[c] + exp(logvars[c] / 2) * eps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vae_serve.errors import ModelLoadError

__all__ = ["MixturePrior", "draw_prior", "read_prior"]

STANDARD_NORMAL = "standard_normal"
MIXTURE = "mixture_of_gaussians"
_CACHED_CARDS = 8  # a few versions side by side (reloads, several models); each prior is small


@dataclass(frozen=True)
class MixturePrior:
    weights: np.ndarray  # [K] float64, summing to 1 (what Generator.choice wants)
    means: np.ndarray  # [K, L] float32
    stds: np.ndarray  # [K, L] float32, exp(logvars / 2)

    def draw(self, k: int, rng: np.random.Generator) -> np.ndarray:
        components = rng.choice(len(self.weights), size=k, p=self.weights)
        eps = rng.standard_normal((k, self.means.shape[1]), dtype=np.float32)
        return self.means[components] + self.stds[components] * eps


def _matrix(prior: Mapping[str, Any], key: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        values = np.asarray(prior[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"model card: prior.{key} missing or not numbers") from None
    if values.shape != shape or not np.isfinite(values).all():
        raise ModelLoadError(f"model card: prior.{key} must be {list(shape)} finite numbers")
    return values


def read_prior(card: Mapping[str, Any], latent: int) -> MixturePrior | None:
    """The card's prior: None for N(0, I), else the mixture. Raises ModelLoadError for a prior
    the server cannot draw from (an unknown type, wrong shapes, weights that are not a
    distribution): it would otherwise serve draws the model was never trained on."""
    prior = card.get("prior")
    if prior is None:
        return None
    kind = prior.get("type") if isinstance(prior, Mapping) else None
    if kind == STANDARD_NORMAL:
        return None
    if kind != MIXTURE:
        raise ModelLoadError(f"model card: prior type {kind!r} unknown ({STANDARD_NORMAL} or {MIXTURE})")
    try:
        weights = np.asarray(prior["weights"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError("model card: prior.weights missing or not numbers") from None
    if weights.ndim != 1 or len(weights) == 0 or not np.isfinite(weights).all() or (weights < 0).any():
        raise ModelLoadError("model card: prior.weights must be K >= 1 non-negative numbers")
    if not weights.sum() > 0:
        raise ModelLoadError("model card: prior.weights sum to 0")
    shape = (len(weights), latent)
    means, logvars = _matrix(prior, "means", shape), _matrix(prior, "logvars", shape)
    with np.errstate(over="ignore"):
        stds = np.exp(logvars / 2).astype(np.float32)
    if not np.isfinite(stds).all():
        raise ModelLoadError("model card: prior.logvars too large")
    return MixturePrior(weights / weights.sum(), means.astype(np.float32), stds)


# Parsed priors by card object: a card is parsed once, not on every Sample. The entry holds the
# card itself, so its id cannot be reused by another object while the entry lives.
_parsed: OrderedDict[int, tuple[Mapping[str, Any], MixturePrior | None]] = OrderedDict()


def draw_prior(card: Mapping[str, Any], k: int, latent: int, rng: np.random.Generator) -> np.ndarray:
    """k draws z [k, latent] float32 from the model's prior, as its card records it."""
    entry = _parsed.get(id(card))
    if entry is None or entry[0] is not card:
        entry = (card, read_prior(card, latent))
        _parsed[id(card)] = entry
        while len(_parsed) > _CACHED_CARDS:
            _parsed.popitem(last=False)
    prior = entry[1]
    if prior is None:
        return rng.standard_normal((k, latent), dtype=np.float32)
    return prior.draw(k, rng)
