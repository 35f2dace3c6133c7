"""Test-set figures: the single-sample -ELBO, the importance-weighted bound on -log p(x) (on the
test images as they are, and optionally on a binarized copy), and the posterior means the card's
principal directions are computed from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .data import ImageRows, as_rows
from .loss import reconstruction_nll
from .prior import Prior, log_normal

__all__ = ["Evaluation", "LatentModel", "binarize", "evaluate", "iwae_nll", "posterior_means"]

# Importance samples decoded at once: k = 100 in one go (as always); a larger k in such slices,
# so k = 5000 needs no more memory than k = 100.
_IWAE_CHUNK = 100


class LatentModel(Protocol):
    """What the figures need of a model: a trained module (`VAE`, `ConvVAE`) or a version's
    graphs (`quantize.GraphModel`)."""

    prior: Prior

    def eval(self) -> Any: ...
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...
    def reparameterize(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Evaluation:
    neg_elbo: float  # mean -ELBO per image, nats (one posterior sample, as pytorch/examples)
    iwae_nll: float  # mean IWAE upper bound on -log p(x) per image, nats
    iwae_k: int
    iwae_binarized_nll: float = math.nan  # the same bound on the binarized test images
    iwae_binarized_k: int = 0


def _log_weights(
    model: LatentModel,
    x: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """log p(x, z_i) - log q(z_i | x) for k draws z_i ~ q(z | x): [k, B]."""
    eps = torch.randn((k, *mean.shape), generator=generator, device=x.device)
    z = mean + torch.exp(0.5 * logvar) * eps  # [k, B, L]
    log_px_z = -reconstruction_nll(model.decode(z), x.expand(k, *x.shape))
    return log_px_z + model.prior.log_prob(z) - log_normal(z, mean, logvar)


def iwae_nll(model: LatentModel, x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """-log (1/k sum_i p(x, z_i) / q(z_i | x)) per row (Burda et al. 2015); tightens as k grows."""
    mean, logvar = model.encode(x)
    slices = [min(_IWAE_CHUNK, k - start) for start in range(0, k, _IWAE_CHUNK)]
    log_w = torch.cat([_log_weights(model, x, mean, logvar, n, generator) for n in slices])
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each value v in [0, 1] becomes 1 with probability v, else 0 (dynamic binarization, drawn
    once with a fixed seed: the test protocol of the binarized-MNIST literature)."""
    return torch.bernoulli(x, generator=generator)


@torch.no_grad()
def posterior_means(
    model: LatentModel, images: torch.Tensor | ImageRows, batch_size: int = 500
) -> np.ndarray:
    """The encoder's means of `images` (rows [N, D]) as float32 [N, L] on the CPU."""
    model.eval()
    return torch.cat([model.encode(x)[0] for x in as_rows(images).batches(batch_size)]).cpu().numpy()


@torch.no_grad()
def evaluate(
    model: LatentModel,
    images: torch.Tensor | ImageRows,
    *,
    iwae_k: int = 100,
    batch_size: int = 500,
    seed: int = 0,
    iwae_binarized_k: int = 0,
) -> Evaluation:
    """The figures over `images` (rows [N, D]), with fixed seeds so repeated evaluations agree
    exactly. `iwae_binarized_k` > 0 adds the IWAE bound with that many samples on the images
    binarized once (seeded by `seed`): the figure published density models report, though a model
    trained on grey values, as ours are, meets binary images only there."""
    model.eval()
    rows = as_rows(images)
    generator = torch.Generator(device=rows.device).manual_seed(seed)
    elbo_sum = iwae_sum = 0.0
    for x in rows.batches(batch_size):
        mean, logvar = model.encode(x)
        z = model.reparameterize(mean, logvar, generator)
        elbo_sum += (reconstruction_nll(model.decode(z), x) + model.prior.kl(mean, logvar, z)).sum().item()
        if iwae_k > 0:
            iwae_sum += iwae_nll(model, x, iwae_k, generator).sum().item()
    binarized = math.nan
    if iwae_binarized_k > 0:
        noise = torch.Generator(device=rows.device).manual_seed(seed)
        draws = torch.Generator(device=rows.device).manual_seed(seed + 1)
        total = sum(
            iwae_nll(model, binarize(x, noise), iwae_binarized_k, draws).sum().item()
            for x in rows.batches(batch_size)
        )
        binarized = total / len(rows)
    n = len(rows)
    return Evaluation(
        elbo_sum / n, iwae_sum / n if iwae_k > 0 else math.nan, iwae_k, binarized, iwae_binarized_k
    )
