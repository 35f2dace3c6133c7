"""Load-time checks of a model version: graphs that do not fit the card are refused with a reason."""

import numpy as np
import pytest
from support import GOOD_DECODER, GOOD_ENCODER, write_version

from vae_serve.errors import ModelLoadError
from vae_serve.server.model import load_model
from vae_serve.server.runtime import choose_providers


def test_a_tiny_conforming_model_loads_and_runs(tmp_path):
    model = load_model(write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER), "cpu", 1)
    assert (model.input_dim, model.latent_dim, model.image_shape) == (6, 2, (2, 3))
    assert model.execution_provider == "CPUExecutionProvider"
    mean, logvar = model.encoder.run(np.ones((4, 6), np.float32))
    assert mean.shape == logvar.shape == (4, 2)
    assert model.card_strings["image_shape"] == "[2, 3]"


@pytest.mark.parametrize(
    ("encoder", "decoder", "message"),
    [
        ({**GOOD_ENCODER, "input_name": "pixels"}, GOOD_DECODER, "input is 'pixels', expected 'x'"),
        ({**GOOD_ENCODER, "outputs": {"mu": 2, "logvar": 2}}, GOOD_DECODER, "outputs are ['logvar', 'mu']"),
        ({**GOOD_ENCODER, "outputs": {"mean": 3, "logvar": 3}}, GOOD_DECODER, "'mean' has shape [batch, 3]"),
        (GOOD_ENCODER, {**GOOD_DECODER, "width": 3}, "'z' has shape [batch, 3], expected [batch, 2]"),
        (GOOD_ENCODER, {**GOOD_DECODER, "batch": 1}, "fixed batch axis 1"),
    ],
)
def test_graphs_that_do_not_fit_are_refused(tmp_path, encoder, decoder, message):
    with pytest.raises(ModelLoadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_model(write_version(tmp_path, encoder, decoder), "cpu", 1)


def test_image_shape_must_match_input_dim(tmp_path):
    with pytest.raises(ModelLoadError, match=r"image_shape \[28, 28\] != input_dim 6"):
        load_model(write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER, image_shape=(28, 28)), "cpu", 1)


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    version = write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER)
    (version.path / "encoder.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: ONNX Runtime cannot load it"):
        load_model(version, "cpu", 1)


def test_cuda_is_refused_on_a_host_without_it():
    if "CUDAExecutionProvider" in choose_providers("auto"):
        pytest.skip("this host really has CUDA")
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match=r"--device cuda: .*; use --device auto or --device cpu"):
        choose_providers("cuda")
