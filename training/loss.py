"""The negative ELBO, per image, in nats: the objective and the reported test figure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_kl", "neg_elbo", "reconstruction_nll"]


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per row, in closed form.

    Kingma & Welling, Auto-Encoding Variational Bayes, Appendix B:
    -KL = 1/2 * sum(1 + log(sigma^2) - mu^2 - sigma^2).
    """
    return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=-1)


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Summed Bernoulli cross-entropy per row; taking logits keeps it finite near 0 and 1."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


def neg_elbo(logits: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-ELBO per row: reconstruction + KL, as pytorch/examples vae/main.py defines it."""
    return reconstruction_nll(logits, x) + gaussian_kl(mean, logvar)
