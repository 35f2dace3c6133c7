import math

import pytest
import torch

from vae_serve.training.loss import gaussian_kl, neg_elbo, reconstruction_nll


def test_closed_form_kl_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 8, generator=gen)
    logvar = torch.randn(4, 8, generator=gen) * 0.5
    n = 400_000
    std = torch.exp(0.5 * logvar)
    z = mean + std * torch.randn(n, 4, 8, generator=gen)
    log_q = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    estimate = (log_q - log_p).mean(0)
    stderr = (log_q - log_p).std(0) / math.sqrt(n)
    # Five standard errors: fails for a wrong sign, a missing 1/2 or a dropped term.
    assert torch.all((estimate - gaussian_kl(mean, logvar)).abs() < 5 * stderr)


def test_kl_is_zero_for_the_prior_itself():
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0


def test_loss_on_a_hand_computed_case():
    # One image of two pixels: x = (1, 0.5); logits (0, ln 3) -> p = (0.5, 0.75).
    x = torch.tensor([[1.0, 0.5]])
    logits = torch.tensor([[0.0, math.log(3.0)]])
    bce = -math.log(0.5) - (0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    # One latent: mean 1, logvar 0 -> KL = 0.5 * (1 + 1 - 0 - 1) = 0.5.
    mean, logvar = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    assert reconstruction_nll(logits, x).item() == pytest.approx(bce, rel=1e-6)
    assert gaussian_kl(mean, logvar).item() == pytest.approx(0.5, rel=1e-6)
    assert neg_elbo(logits, x, mean, logvar).item() == pytest.approx(bce + 0.5, rel=1e-6)


def test_reconstruction_is_finite_at_saturated_logits():
    x = torch.tensor([[0.0, 1.0]])
    logits = torch.tensor([[-200.0, 200.0]])
    assert torch.isfinite(reconstruction_nll(logits, x)).all()
