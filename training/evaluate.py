"""Test-set figures: the single-sample -ELBO, the importance-weighted bound on -log p(x), and the
posterior means the card's principal directions are computed from."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .data import ImageRows, as_rows
from .loss import neg_elbo, reconstruction_nll
from .model import VAE, ConvVAE

__all__ = ["Evaluation", "evaluate", "iwae_nll", "posterior_means"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Evaluation:
    neg_elbo: float  # mean -ELBO per image, nats (one posterior sample, as pytorch/examples)
    iwae_nll: float  # mean IWAE upper bound on -log p(x) per image, nats
    iwae_k: int


def _log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * torch.sum(_LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp(), dim=-1)


def iwae_nll(model: VAE | ConvVAE, x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """-log (1/k sum_i p(x, z_i) / q(z_i | x)) per row (Burda et al. 2015); tightens as k grows."""
    mean, logvar = model.encode(x)
    eps = torch.randn((k, *mean.shape), generator=generator, device=x.device)
    z = mean + torch.exp(0.5 * logvar) * eps  # [k, B, L]
    log_px_z = -reconstruction_nll(model.decode(z), x.expand(k, *x.shape))
    log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    log_qz = _log_normal(z, mean, logvar)
    log_w = log_px_z + log_pz - log_qz
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


@torch.no_grad()
def posterior_means(
    model: VAE | ConvVAE, images: torch.Tensor | ImageRows, batch_size: int = 500
) -> np.ndarray:
    """The encoder's means of `images` (rows [N, D]) as float32 [N, L] on the CPU."""
    model.eval()
    return torch.cat([model.encode(x)[0] for x in as_rows(images).batches(batch_size)]).cpu().numpy()


@torch.no_grad()
def evaluate(
    model: VAE | ConvVAE,
    images: torch.Tensor | ImageRows,
    *,
    iwae_k: int = 100,
    batch_size: int = 500,
    seed: int = 0,
) -> Evaluation:
    """Both figures over `images` (rows [N, D]), with a fixed seed so repeated evaluations agree
    exactly."""
    model.eval()
    rows = as_rows(images)
    generator = torch.Generator(device=rows.device).manual_seed(seed)
    elbo_sum = iwae_sum = 0.0
    for x in rows.batches(batch_size):
        mean, logvar = model.encode(x)
        z = model.reparameterize(mean, logvar, generator)
        elbo_sum += neg_elbo(model.decode(z), x, mean, logvar).sum().item()
        if iwae_k > 0:
            iwae_sum += iwae_nll(model, x, iwae_k, generator).sum().item()
    n = len(rows)
    return Evaluation(elbo_sum / n, iwae_sum / n if iwae_k > 0 else math.nan, iwae_k)
