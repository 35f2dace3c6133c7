"""Load-time checks of a model version: graphs that do not fit the card are refused with a reason."""

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vae_serve.errors import ModelLoadError
from vae_serve.server.model import load_model
from vae_serve.server.repository import resolve
from vae_serve.server.runtime import choose_providers


def linear_graph(path, input_name, width, outputs: dict[str, int], batch="batch", op="Identity"):
    """A tiny real ONNX graph: each output = input @ W (zeros), with the given names and widths."""
    nodes, inits, outs = [], [], []
    for name, out_width in outputs.items():
        w = numpy_helper.from_array(np.zeros((width, out_width), np.float32), f"W_{name}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [input_name, f"W_{name}"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, out_width]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, width])],
        outs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def write_version(root, encoder: dict, decoder: dict, input_dim=6, latent_dim=2, image_shape=(2, 3)):
    path = root / "m" / "1"
    path.mkdir(parents=True)
    linear_graph(path / "encoder.onnx", **encoder)
    linear_graph(path / "decoder.onnx", **decoder)
    files = {
        f: {"sha256": hashlib.sha256((path / f).read_bytes()).hexdigest()}
        for f in ("encoder.onnx", "decoder.onnx")
    }
    card = {
        "input_dim": input_dim,
        "latent_dim": latent_dim,
        "image_shape": list(image_shape),
        "files": files,
    }
    (path / "model.json").write_text(json.dumps(card))
    return resolve(root, "m")


GOOD_ENCODER = {"input_name": "x", "width": 6, "outputs": {"mean": 2, "logvar": 2}}
GOOD_DECODER = {"input_name": "z", "width": 2, "outputs": {"x": 6}}


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
