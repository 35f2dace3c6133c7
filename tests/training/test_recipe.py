"""The recipe's options: learning-rate and KL warm-up, a wider encoder alone, a learned mixture
prior, and the IWAE bound on binarized test images; each one changes training or evaluation as
it says, and the card records it."""

import json
import math

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from vae_serve.training.cli import main
from vae_serve.training.data import load_images
from vae_serve.training.evaluate import binarize, evaluate, iwae_nll
from vae_serve.training.loss import gaussian_kl
from vae_serve.training.model import VAE, VAEConfig, config_from_dict
from vae_serve.training.prior import LOGVAR_MAX, MixturePrior, StandardNormalPrior
from vae_serve.training.train import Checkpoint, DistContext, Schedule, train

TINY = VAEConfig(784, (32,), 4)


@pytest.fixture(scope="module")
def rows(fashion_mnist_dir):
    train_x = torch.from_numpy(load_images(fashion_mnist_dir, "train", 256).reshape(256, -1))
    test_x = torch.from_numpy(load_images(fashion_mnist_dir, "t10k", 128).reshape(128, -1))
    return train_x, test_x


def fit(config, train_x, **options):
    return train(config, train_x, ctx=DistContext(), epochs=2, batch_size=32, lr=3e-3, seed=0, **options)[0]


# --- The schedule ------------------------------------------------------------------------------


def test_learning_rate_warms_up_then_decays_on_a_cosine():
    schedule = Schedule(total_steps=110, lr_warmup_steps=10)
    assert [schedule.lr_factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert schedule.lr_factor(10) == pytest.approx(1.0)
    assert schedule.lr_factor(60) == pytest.approx(0.5)  # half way through the decay
    assert schedule.lr_factor(110) == pytest.approx(0.0, abs=1e-12)
    assert schedule.lr_factor(500) == pytest.approx(0.0, abs=1e-12)  # resumed past the end: stays at 0


def test_without_warm_up_the_schedule_is_the_plain_cosine():
    schedule = Schedule(total_steps=80)
    for step in (0, 13, 40, 79, 80, 95):
        assert schedule.lr_factor(step) == 0.5 * (1 + math.cos(math.pi * min(step, 80) / 80))
        assert schedule.kl_weight(step) == 1.0


def test_kl_weight_rises_linearly_from_zero():
    schedule = Schedule(total_steps=100, kl_warmup_steps=20)
    assert [schedule.kl_weight(s) for s in (0, 5, 10, 20, 99)] == pytest.approx([0, 0.25, 0.5, 1, 1])


def mean_kl(model, x):
    with torch.no_grad():
        mean, logvar = model.eval().encode(x)
        return gaussian_kl(mean, logvar).mean().item()


def test_kl_warm_up_lets_the_posteriors_leave_the_prior(rows):
    """While the KL term weighs (almost) nothing, the encoder spends nats on it freely."""
    train_x, test_x = rows
    plain = fit(TINY, train_x)
    annealed = fit(TINY, train_x, kl_warmup_epochs=1000)
    assert mean_kl(annealed, test_x) > 2 * mean_kl(plain, test_x)


def test_lr_warm_up_takes_smaller_first_steps(rows):
    train_x, _ = rows
    torch.manual_seed(0)
    start = VAE(TINY).state_dict()  # train() seeds the same way, so this is its initial model

    def moved(model):
        return sum((p - start[n]).norm().item() for n, p in model.state_dict().items())

    assert moved(fit(TINY, train_x, lr_warmup_epochs=100)) < 0.2 * moved(fit(TINY, train_x))


# --- A wider encoder, the same decoder ----------------------------------------------------------


def test_encoder_hidden_widens_only_the_encoder():
    wide = VAE(VAEConfig(784, (32,), 4, encoder_hidden=(128, 64)))
    plain = VAE(TINY)
    assert [m.out_features for m in wide.encoder_body if isinstance(m, torch.nn.Linear)] == [128, 64]
    assert wide.encoder_head.in_features == 64
    decoder_shapes = [(n, p.shape) for n, p in wide.named_parameters() if n.startswith("decoder")]
    assert decoder_shapes == [(n, p.shape) for n, p in plain.named_parameters() if n.startswith("decoder")]


def test_configs_round_trip_and_old_ones_still_read():
    config = VAEConfig(784, (32,), 4, encoder_hidden=(128, 64), prior_components=3)
    assert config_from_dict(config.to_dict()) == config
    assert VAEConfig(784, (32,), 4, encoder_hidden=(32,)) == TINY  # the mirrored encoder, spelt out
    # a checkpoint or card written before these fields: the mirrored encoder and N(0, I)
    assert config_from_dict({"input_dim": 784, "hidden": [32], "latent_dim": 4}) == TINY


# --- The mixture prior --------------------------------------------------------------------------


def test_mixture_log_prob_is_the_mixture_density():
    torch.manual_seed(0)
    prior = MixturePrior(5, 3)
    with torch.no_grad():
        prior.logits.normal_()
        prior.logvars.normal_(std=0.5)
    z = torch.randn(7, 3)
    dist = torch.distributions
    components = dist.Independent(dist.Normal(prior.means, (0.5 * prior.logvars).exp()), 1)
    reference = dist.MixtureSameFamily(dist.Categorical(logits=prior.logits), components)
    assert torch.allclose(prior.log_prob(z), reference.log_prob(z), atol=1e-5)


def test_mixture_kl_estimate_is_unbiased():
    """One component at N(0, I): the one-draw estimate averages to the closed-form KL."""
    prior = MixturePrior(1, 6)
    with torch.no_grad():
        prior.means.zero_()
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(1, 6, generator=generator)
    logvar = 0.5 * torch.randn(1, 6, generator=generator)
    z = mean + (0.5 * logvar).exp() * torch.randn(200_000, 6, generator=generator)
    with torch.no_grad():
        estimates = prior.kl(mean.expand_as(z), logvar.expand_as(z), z)
    stderr = estimates.std() / math.sqrt(len(z))
    assert abs(estimates.mean() - gaussian_kl(mean, logvar)[0]) < 5 * stderr
    assert StandardNormalPrior().kl(mean, logvar, z[:1]).item() == gaussian_kl(mean, logvar).item()


@pytest.mark.parametrize(("components", "cap"), [(0, 50.0), (3, LOGVAR_MAX)])
def test_a_mixture_caps_the_posterior_log_variance(components, cap):
    """One draw's KL estimate does not hold a huge posterior variance in; the closed form does, so
    the standard prior's encoder stays as it always was."""
    model = VAE(VAEConfig(784, (32,), 4, prior_components=components))
    with torch.no_grad():
        model.encoder_head.bias[4:] = 50.0  # the log-variance half
        model.encoder_head.weight.zero_()
        _, logvar = model.encode(torch.rand(2, 784))
    assert torch.all(logvar == cap)


def test_pruning_drops_only_the_components_that_weigh_nothing():
    prior = MixturePrior(5, 3)
    with torch.no_grad():
        prior.logits.copy_(torch.log(torch.tensor([0.5, 1e-6, 0.3, 0.2, 1e-7])))
    z = torch.randn(100, 3)
    before = prior.log_prob(z)
    means = prior.means.detach().clone()
    assert prior.prune(1e-4) == 3
    assert torch.equal(prior.means, means[[0, 2, 3]])
    assert torch.allclose(torch.softmax(prior.logits, 0), torch.tensor([0.5, 0.3, 0.2]), atol=1e-5)
    assert (prior.log_prob(z) - before).abs().max() < 1e-3  # the density barely moves
    assert prior.prune(1.0) == 1 and torch.equal(prior.means, means[[0]])  # never the heaviest
    assert len(prior.to_card()["weights"]) == 1


def test_mixture_prior_is_learned_and_checkpointed(rows, tmp_path):
    train_x, test_x = rows
    config = VAEConfig(784, (32,), 4, prior_components=3)
    torch.manual_seed(0)
    initial = VAE(config).prior.means.detach().clone()
    model = fit(config, train_x, checkpoint_path=tmp_path / "last.pt")
    assert not torch.allclose(model.prior.means, initial)
    state = Checkpoint.load(tmp_path / "last.pt")
    again = VAE(state.config)
    again.load_state_dict(state.model)
    assert torch.equal(again.prior.logits, model.prior.logits)
    figures = evaluate(model, test_x, iwae_k=20)
    assert figures.iwae_nll < figures.neg_elbo + 1.0  # the bound is tighter, with this prior too


# --- The binarized evaluation -------------------------------------------------------------------


def test_binarize_draws_each_pixel_with_its_grey_value():
    x = torch.tensor([0.0, 1.0, 0.3]).repeat(20_000, 1)
    drawn = binarize(x, torch.Generator().manual_seed(0))
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert drawn[:, 0].sum() == 0 and drawn[:, 1].min() == 1
    assert drawn[:, 2].mean().item() == pytest.approx(0.3, abs=0.01)


def test_binarized_bound_is_its_own_figure_and_repeatable(rows):
    train_x, test_x = rows
    model = fit(TINY, train_x)
    first = evaluate(model, test_x, iwae_k=10, iwae_binarized_k=150)  # more than one slice of samples
    again = evaluate(model, test_x, iwae_k=10, iwae_binarized_k=150)
    assert first == again
    assert math.isfinite(first.iwae_binarized_nll) and first.iwae_binarized_k == 150
    assert abs(first.iwae_binarized_nll - first.iwae_nll) > 1.0
    assert math.isnan(evaluate(model, test_x, iwae_k=10).iwae_binarized_nll)


def test_iwae_bound_tightens_with_more_samples(rows):
    train_x, test_x = rows
    model = fit(TINY, train_x).eval()
    with torch.no_grad():
        one = iwae_nll(model, test_x, 1, torch.Generator().manual_seed(0)).mean()
        many = iwae_nll(model, test_x, 250, torch.Generator().manual_seed(0)).mean()  # three slices
    assert many < one - 1.0


# --- The command --------------------------------------------------------------------------------


def initializer_sizes(path):
    """Sizes of a graph's weights and biases (scalar constants left out)."""
    return sorted(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer if t.dims)


def test_command_trains_with_every_option_and_the_card_records_them(fashion_mnist_dir, tmp_path):
    args = ["--data", str(fashion_mnist_dir), "--limit", "256", "--epochs", "2", "--batch-size", "64"]
    args += ["--hidden", "32", "--encoder-hidden", "64,16", "--latent-dim", "4"]
    args += ["--prior", "mog", "--prior-components", "3"]
    args += ["--kl-warmup-epochs", "1", "--lr-warmup-epochs", "1"]
    args += ["--iwae-k", "5", "--iwae-binarized-k", "7"]
    args += ["--model-repository", str(tmp_path), "--checkpoint", str(tmp_path / "last.pt")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    version = tmp_path / "fashion-vae" / "1"
    card = json.loads((version / "model.json").read_text())
    assert card["architecture"]["hidden"] == [32] and card["architecture"]["encoder_hidden"] == [64, 16]
    assert (card["lr_warmup_epochs"], card["kl_warmup_epochs"]) == (1, 1)
    assert card["iwae_binarized_k"] == 7 and math.isfinite(card["test_iwae_nll_binarized_nats"])
    prior = card["prior"]
    assert prior["type"] == "mixture_of_gaussians" and 1 <= prior["components"] == len(prior["weights"]) <= 3
    assert sum(prior["weights"]) == pytest.approx(1.0)
    assert np.array(prior["means"]).shape == np.array(prior["logvars"]).shape == (prior["components"], 4)
    state = Checkpoint.load(tmp_path / "last.pt")
    trained = state.model["prior.means"].numpy()  # all 3; the card holds those not pruned
    for row in prior["means"]:
        assert np.abs(trained - np.array(row)).max(axis=1).min() < 1e-6
    # the graphs hold exactly their own layers: a 784-64-16-(2x4) encoder, a 4-32-784 decoder,
    # and no prior (it is on the card)
    assert initializer_sizes(version / "encoder.onnx") == sorted([784 * 64, 64, 64 * 16, 16, 16 * 8, 8])
    assert initializer_sizes(version / "decoder.onnx") == sorted([4 * 32, 32, 32 * 784, 784])


def test_default_card_records_the_standard_prior_and_no_binarized_figure(fashion_mnist_dir, tmp_path):
    args = ["--data", str(fashion_mnist_dir), "--limit", "128", "--epochs", "1", "--hidden", "16"]
    args += ["--latent-dim", "2", "--iwae-k", "0", "--model-repository", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--checkpoint", str(tmp_path / "last.pt")])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "fashion-vae" / "1" / "model.json").read_text())
    assert card["prior"] == {"type": "standard_normal"}
    assert (card["lr_warmup_epochs"], card["kl_warmup_epochs"]) == (0, 0)
    assert card["test_iwae_nll_binarized_nats"] is None and card["iwae_binarized_k"] == 0
    assert card["architecture"]["encoder_hidden"] == [16]


def test_encoder_hidden_is_refused_for_a_conv_model(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 8, 8), np.uint8))
    args = ["--data", str(tmp_path / "x.npy"), "--arch", "conv", "--encoder-hidden", "64", "--no-export"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--encoder-hidden is for --arch mlp" in result.output
