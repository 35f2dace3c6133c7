"""The committed default model: intact, documented, and as good as the README says."""

import hashlib
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from support import DEFAULT_MODEL_DIR

from vae_serve.training.directions import COUNT, card_with_directions

CARD = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())


@pytest.mark.parametrize("name", ["encoder.onnx", "decoder.onnx"])
def test_card_checksums_match_the_files(name):
    data = (DEFAULT_MODEL_DIR / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == CARD["files"][name]["sha256"]
    assert len(data) == CARD["files"][name]["bytes"]


def io(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (
        [(i.name, i.type, i.shape[1], isinstance(i.shape[0], str)) for i in session.get_inputs()],
        [(o.name, o.type, o.shape[1], isinstance(o.shape[0], str)) for o in session.get_outputs()],
    )


def test_graphs_have_the_documented_names_and_shapes():
    latent = CARD["latent_dim"]
    assert io(DEFAULT_MODEL_DIR / "encoder.onnx") == (
        [("x", "tensor(float)", 784, True)],
        [("mean", "tensor(float)", latent, True), ("logvar", "tensor(float)", latent, True)],
    )
    assert io(DEFAULT_MODEL_DIR / "decoder.onnx") == (
        [("z", "tensor(float)", latent, True)],
        [("x", "tensor(float)", 784, True)],
    )


def test_card_meets_the_quality_bar():
    assert CARD["test_neg_elbo_nats"] <= 238
    assert CARD["test_iwae_nll_nats"] <= CARD["test_neg_elbo_nats"]
    assert CARD["training_seconds"] <= 15 * 60
    assert (CARD["input_dim"], CARD["image_shape"], CARD["test_images"]) == (784, [28, 28], 10000)
    assert max(CARD["parity_max_abs_diff"].values()) <= 1e-5


def test_card_principal_directions_are_orthonormal_and_what_the_script_recomputes(tmp_path):
    recorded = CARD["principal_directions"]
    vectors = np.array(recorded["vectors"])
    assert vectors.shape == (COUNT, CARD["latent_dim"])
    assert np.allclose(vectors @ vectors.T, np.eye(COUNT), atol=1e-4)  # unit norm, orthogonal
    assert recorded["std"] == sorted(recorded["std"], reverse=True)
    for name in ("model.json", "encoder.onnx"):
        shutil.copy(DEFAULT_MODEL_DIR / name, tmp_path / name)
    recomputed = card_with_directions(tmp_path)["principal_directions"]
    for key in ("mean", "std", "vectors"):
        assert np.allclose(recomputed[key], recorded[key], atol=1e-4), key
