"""A tiny real training run: the loss goes down and the exported graphs match PyTorch."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vae_serve.training import export
from vae_serve.training.data import load_images
from vae_serve.training.evaluate import evaluate
from vae_serve.training.model import VAE, Decoder, Encoder, VAEConfig
from vae_serve.training.train import Checkpoint, DistContext, train

CONFIG = VAEConfig(784, (64,), 8)


def publish(model, repository, card=None):
    """The trainer's own export: its model's encoder and decoder through `export_vae`."""
    return export.export_vae(
        Encoder(model),
        Decoder(model),
        image_shape=[28, 28],
        model_repository=repository,
        name="tiny",
        version="1",
        card=card,
        arch="mlp",
    )


@pytest.fixture(scope="module")
def tiny_data(fashion_mnist_dir):
    train_x = torch.from_numpy(load_images(fashion_mnist_dir, "train", 384).reshape(384, -1))
    test_x = torch.from_numpy(load_images(fashion_mnist_dir, "t10k", 256).reshape(256, -1))
    return train_x, test_x


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    train_x, _ = tiny_data
    ckpt = tmp_path_factory.mktemp("ckpt") / "last.pt"
    model, _ = train(
        CONFIG, train_x, ctx=DistContext(), epochs=2, batch_size=32, lr=3e-3, seed=0, checkpoint_path=ckpt
    )
    return model, ckpt


def test_training_lowers_the_test_loss(tiny_data, trained):
    _, test_x = tiny_data
    torch.manual_seed(0)
    before = evaluate(VAE(CONFIG), test_x, iwae_k=10)
    after = evaluate(trained[0], test_x, iwae_k=10)
    assert after.neg_elbo < before.neg_elbo - 50
    # The IWAE bound is tighter than the single-sample ELBO, up to Monte-Carlo noise.
    assert after.iwae_nll < after.neg_elbo + 1.0


def test_training_is_reproducible(tiny_data, trained):
    train_x, _ = tiny_data
    again, _ = train(CONFIG, train_x, ctx=DistContext(), epochs=2, batch_size=32, lr=3e-3, seed=0)
    for a, b in zip(trained[0].parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_from_checkpoint_continues(tiny_data, trained):
    train_x, test_x = tiny_data
    state = Checkpoint.load(trained[1])
    assert state.epoch == 2
    for a, b in zip(trained[0].state_dict().values(), state.model.values(), strict=True):
        assert torch.equal(a, b)

    def resume():
        return train(
            CONFIG,
            train_x,
            ctx=DistContext(),
            epochs=4,
            batch_size=32,
            lr=3e-3,
            seed=0,
            resume=Checkpoint.load(trained[1]),
        )

    (first, seconds), (second, _) = resume(), resume()
    assert seconds > state.train_seconds
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)  # the noise generator's state came back with the checkpoint
    assert evaluate(first, test_x, iwae_k=0).neg_elbo < evaluate(trained[0], test_x, iwae_k=0).neg_elbo


@pytest.mark.slow
def test_export_writes_a_version_that_matches_pytorch(trained, tmp_path):
    model = trained[0]
    path = publish(model, tmp_path, {"latent_dim": 8})
    card = json.loads((path / "model.json").read_text())
    assert card["name"] == "tiny"
    assert card["version"] == "1"
    for name in ("encoder.onnx", "decoder.onnx"):
        assert card["parity_max_abs_diff"][name] <= export.PARITY_TOLERANCE
        assert card["files"][name]["sha256"] == export.sha256_of(path / name)
    encoder = ort.InferenceSession(str(path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    mean, logvar = encoder.run(["mean", "logvar"], {"x": x})
    (recon,) = decoder.run(["x"], {"z": mean})
    with torch.no_grad():
        want_mean, want_logvar = model.encode(torch.from_numpy(x))
        want_recon = torch.sigmoid(model.decode(want_mean))
    np.testing.assert_allclose(mean, want_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(logvar, want_logvar.numpy(), atol=1e-5)
    np.testing.assert_allclose(recon, want_recon.numpy(), atol=1e-5)
    assert export.next_version(tmp_path, "tiny") == "2"


def test_export_fails_loudly_past_the_tolerance_and_leaves_nothing(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_TOLERANCE", 0.0)
    with pytest.raises(export.ExportError, match=r"encoder.onnx: ONNX Runtime differs from PyTorch by"):
        publish(trained[0], tmp_path)
    assert list((tmp_path / "tiny").iterdir()) == []


def test_export_refuses_to_overwrite_a_version(trained, tmp_path):
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    with pytest.raises(export.ExportError, match="already exists"):
        publish(trained[0], tmp_path)
