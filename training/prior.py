"""The latent prior p(z): the standard normal N(0, I), or a learned mixture of Gaussians.

A standard normal prior pulls every posterior towards one bump, while the test set's posterior
means sit in clusters (garment classes); a mixture of K diagonal Gaussians with learned weights,
means and log-variances can follow them, so the KL term costs fewer nats for the same
reconstructions. The prior is not part of the exported graphs: the card records it (`to_card`)
and the server draws Sample's z from that record.

A mixture has no closed-form KL: it is estimated from the one posterior draw, which does not
hold the posterior variance in as the closed form's exp(logvar) term does. An odd training image
(seen: one faint one in Fashion-MNIST's 60k) could then drive its posterior log-variance past
100, its draws to 1e26 and the loss to 1e23; so with a mixture the encoder's log-variance is
capped at LOGVAR_MAX (a standard deviation of 2.7, wider than any prior component needs), as
VampPrior's code caps it.

Training leaves some components with next to no weight. `prune` drops them before the model is
evaluated and its card written: they change no figure measurably, and each costs the card a
mean and a log-variance per latent dimension, which every model-info reply carries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .loss import gaussian_kl

__all__ = [
    "LOGVAR_MAX",
    "PRIORS",
    "MixturePrior",
    "Prior",
    "StandardNormalPrior",
    "build_prior",
    "log_normal",
    "prior_from_card",
]

PRIORS = ("standard", "mog")
LOGVAR_MAX = 2.0
MIN_COMPONENT_WEIGHT = 1e-4  # lighter mixture components are pruned after training
_LOG_2PI = math.log(2 * math.pi)
_CARD_DIGITS = 9  # enough to give back every float32 exactly


def log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * torch.sum(_LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp(), dim=-1)


def _listed(values: torch.Tensor) -> list:
    rounded = [float(f"{v:.{_CARD_DIGITS}g}") for v in values.detach().cpu().double().flatten().tolist()]
    return torch.tensor(rounded, dtype=torch.float64).reshape(values.shape).tolist()


class StandardNormalPrior(nn.Module):
    """N(0, I): no parameters, so a model with it has the state dict it always had."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return log_normal(z, torch.zeros_like(z), torch.zeros_like(z))

    def bound_logvar(self, logvar: torch.Tensor) -> torch.Tensor:
        """The encoder's log-variance as it is: the closed-form KL bounds it."""
        return logvar

    def kl(self, mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per row in closed form; `z` is not needed."""
        return gaussian_kl(mean, logvar)

    def to_card(self) -> dict[str, object]:
        return {"type": "standard_normal"}


class MixturePrior(nn.Module):
    """sum_k w_k N(z; mu_k, diag(exp(logvar_k))), all learned with the VAE."""

    def __init__(self, components: int, latent_dim: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        # Spread apart at the start, so the components do not all learn the same thing.
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(components, latent_dim))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z [..., L]: a log-sum-exp over the components."""
        per_component = log_normal(z.unsqueeze(-2), self.means, self.logvars)  # [..., K]
        return torch.logsumexp(torch.log_softmax(self.logits, dim=0) + per_component, dim=-1)

    def bound_logvar(self, logvar: torch.Tensor) -> torch.Tensor:
        """The encoder's log-variance, capped at LOGVAR_MAX (see the module's docstring)."""
        return logvar.clamp(max=LOGVAR_MAX)

    def kl(self, mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per row, estimated from the one draw `z` (no closed form for a mixture)."""
        return log_normal(z, mean, logvar) - self.log_prob(z)

    @torch.no_grad()
    def prune(self, min_weight: float = MIN_COMPONENT_WEIGHT) -> int:
        """Drop the components weighing less than `min_weight` (never the heaviest); the others'
        weights grow in proportion. Returns how many are left."""
        weights = torch.softmax(self.logits, dim=0)
        keep = (weights >= min_weight) | (weights == weights.max())
        if not keep.all():
            for name in ("logits", "means", "logvars"):
                setattr(self, name, nn.Parameter(getattr(self, name)[keep].clone()))
        return int(keep.sum())

    def to_card(self) -> dict[str, object]:
        return {
            "type": "mixture_of_gaussians",
            "components": len(self.logits),
            "weights": _listed(torch.softmax(self.logits, dim=0)),
            "means": _listed(self.means),
            "logvars": _listed(self.logvars),
        }


Prior = StandardNormalPrior | MixturePrior


def build_prior(components: int, latent_dim: int) -> Prior:
    """0 components: N(0, I); otherwise a mixture of that many Gaussians."""
    return MixturePrior(components, latent_dim) if components > 0 else StandardNormalPrior()


def prior_from_card(card: Mapping[str, Any]) -> Prior:
    """The prior a card records (`to_card`'s form; a card without one: N(0, I)), for figures
    computed from a version's graphs rather than its module."""
    record = card.get("prior") or {"type": "standard_normal"}
    if record.get("type") == "standard_normal":
        return StandardNormalPrior()
    if record.get("type") != "mixture_of_gaussians":
        raise ValueError(f"prior: unknown type {record.get('type')!r}")
    means = torch.tensor(record["means"], dtype=torch.float32)
    prior = MixturePrior(*means.shape)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor(record["weights"], dtype=torch.float64).log().float())
        prior.means.copy_(means)
        prior.logvars.copy_(torch.tensor(record["logvars"], dtype=torch.float32))
    return prior
