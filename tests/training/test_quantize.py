"""`vae-train quantize`: the bundled model's graphs quantized to 8 bits, published as a new version
whose card's figures are computed from the served files, and refused past the quality bound."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import DEFAULT_MODEL_DIR

from vae_serve.server.models.repository import resolve
from vae_serve.training import ExportError
from vae_serve.training.cli import main
from vae_serve.training.data import open_data
from vae_serve.training.evaluate import evaluate
from vae_serve.training.prior import prior_from_card
from vae_serve.training.quantize import GraphModel, quantize_version

TEST_IMAGES = 500


@pytest.fixture(scope="module")
def test_rows(fashion_mnist_dir):
    return open_data(fashion_mnist_dir, limit=TEST_IMAGES).test


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A repository holding a copy of the bundled model's default version."""
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(DEFAULT_MODEL_DIR, root / "fashion-vae" / DEFAULT_MODEL_DIR.name)
    return root / "fashion-vae" / DEFAULT_MODEL_DIR.name


@pytest.fixture(scope="module")
def quantized(source, test_rows):
    return quantize_version(source, test_rows, iwae_k=10)


def card_of(path):
    return json.loads((path / "model.json").read_text())


def test_graphs_give_the_cards_figures(source, fashion_mnist_dir):
    """The -ELBO of a version's graphs in ONNX Runtime is the one its card records from PyTorch
    over the whole test set, up to the single draw per image (without the IWAE pass between
    batches the draws differ: about 0.03 nats here), so a quantized version's figures compare
    like with like."""
    card = card_of(source)
    rows = open_data(fashion_mnist_dir).test
    figures = evaluate(GraphModel(source, prior_from_card(card)), rows, iwae_k=0)
    assert figures.neg_elbo == pytest.approx(card["test_neg_elbo_nats"], abs=0.1)


def test_a_quantized_version_is_published_beside_its_source(source, quantized, test_rows):
    assert quantized.path == source.parent / str(int(source.name) + 1)
    card = card_of(quantized.path)
    record = card["quantization"]
    assert record["source_version"] == source.name
    # The card's figures are those of the published files, with the run's seeds.
    again = evaluate(GraphModel(quantized.path, prior_from_card(card)), test_rows, iwae_k=10)
    assert card["test_neg_elbo_nats"] == pytest.approx(again.neg_elbo, abs=1e-3)
    assert card["test_iwae_nll_nats"] == pytest.approx(again.iwae_nll, abs=1e-3)
    increase = card["test_neg_elbo_nats"] - record["source_test_neg_elbo_nats"]
    assert record["test_neg_elbo_increase_nats"] == pytest.approx(increase, abs=2e-3)
    assert 0 < abs(increase) <= 0.5
    assert 0 < record["max_abs_diff"]["x"] < 0.2
    # What the graphs cannot vouch for is not carried over.
    assert "parity_max_abs_diff" not in card and card["test_iwae_nll_binarized_nats"] is None
    assert card["prior"] == card_of(source)["prior"]
    for name in ("encoder.onnx", "decoder.onnx"):
        assert (quantized.path / name).stat().st_size < (source / name).stat().st_size / 3


def test_the_server_reads_the_quantized_version(quantized):
    version = resolve(quantized.path.parent.parent, "fashion-vae", quantized.path.name)
    assert version.spec.latent_dim == 32
    assert version.card["quantization"]["source_version"] == DEFAULT_MODEL_DIR.name


def test_the_graphs_run_in_integers(quantized):
    import onnx

    ops = {node.op_type for node in onnx.load(str(quantized.path / "decoder.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops


def test_a_rows_answer_depends_on_its_batch_as_the_card_says(quantized):
    """Why the default model stays float behind the batcher: the activations are quantized with
    one scale per batch, so a row decoded beside others is not the row decoded alone."""
    import onnxruntime as ort

    assert card_of(quantized.path)["quantization"]["rows_depend_on_their_batch"] is True
    decoder = ort.InferenceSession(str(quantized.path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).standard_normal((64, 32), dtype=np.float32)
    z[1:] *= 3  # batch-mates with a wider range than the row of interest
    (alone,) = decoder.run(["x"], {"z": z[:1]})
    (batched,) = decoder.run(["x"], {"z": z})
    assert np.abs(alone[0] - batched[0]).max() > 1e-3


def test_past_the_bound_nothing_is_published(source, test_rows):
    before = sorted(p.name for p in source.parent.iterdir())
    with pytest.raises(ExportError, match=r"quantized graphs lose -?\d+\.\d+ nats of test -ELBO"):
        quantize_version(source, test_rows, version="9", iwae_k=0, max_loss_nats=-1.0)
    assert sorted(p.name for p in source.parent.iterdir()) == before  # no version, no staging left


def test_a_quantized_version_is_not_quantized_again(quantized, test_rows):
    with pytest.raises(ExportError, match="already quantized"):
        quantize_version(quantized.path, test_rows)


def test_the_command_publishes_and_says_what_it_cost(source, fashion_mnist_dir, monkeypatch):
    monkeypatch.setattr("vae_serve.training.cli.open_data", lambda *a, **k: open_data(*a, **k, limit=200))
    args = ["quantize", str(source), "--data", str(fashion_mnist_dir), "--version", "7", "--iwae-k", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{source.parent / '7'}: published; test -ELBO ")
    assert "% of the size" in result.output
    assert card_of(source.parent / "7")["iwae_k"] == 0


def test_the_command_refuses_a_folder_without_a_card_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["quantize", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path / 'model.json'}: not a model card (")
    assert len(result.output.strip().splitlines()) == 1


def test_the_prior_from_a_card_is_the_trained_one():
    from vae_serve.training.prior import MixturePrior

    torch.manual_seed(0)
    trained = MixturePrior(3, 2)
    restored = prior_from_card({"prior": trained.to_card()})
    z = torch.randn(5, 2)
    with torch.no_grad():
        assert np.allclose(restored.log_prob(z).numpy(), trained.log_prob(z).numpy(), atol=1e-5)


def test_a_card_larger_than_a_server_reads_is_refused_unread(tmp_path):
    from vae_serve.training.export import MAX_CARD_BYTES

    (tmp_path / "model.json").write_text(" " * (MAX_CARD_BYTES + 1))
    result = CliRunner().invoke(main, ["quantize", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {tmp_path / 'model.json'}: not a model card (over the {MAX_CARD_BYTES} bytes a server reads)"
    )


def test_a_prior_the_card_garbles_is_refused_in_one_line(source, test_rows, tmp_path):
    broken = tmp_path / "fashion-vae" / "1"
    shutil.copytree(source, broken)
    card = card_of(broken)
    card["prior"] = {"type": "mixture_of_gaussians", "weights": [1.0]}  # no means
    (broken / "model.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match=r"model\.json: prior unreadable \("):
        quantize_version(broken, test_rows, iwae_k=0)
    assert sorted(p.name for p in broken.parent.iterdir()) == ["1"]
