"""Load-time checks of a model version: graphs that do not fit the card are refused with a reason."""

import hashlib
import json
import os

import numpy as np
import onnx
import pytest
from support import GOOD_DECODER, GOOD_ENCODER, linear_graph, write_version, write_version_files

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.errors import ModelLoadError
from vae_serve.server.models.graph import choose_providers
from vae_serve.server.models.model import MAX_CARD_DEPTH, load_model
from vae_serve.server.models.repository import resolve


def test_a_tiny_conforming_model_loads_and_runs(tmp_path):
    model = load_model(write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER), "cpu", 1)
    assert (model.input_dim, model.latent_dim, model.image_shape) == (6, 2, (2, 3))
    assert model.execution_provider == "CPUExecutionProvider"
    mean, logvar = model.encoder.run(np.ones((4, 6), np.float32))
    assert mean.shape == logvar.shape == (4, 2)
    assert model.card_strings["image_shape"] == "[2, 3]"
    assert model.card["image_shape"] == [2, 3] and model.card_struct["input_dim"] == 6


def test_the_card_keeps_its_types_and_only_exact_numbers(tmp_path):
    """The card both front ends send: what model.json holds, typed, except an integer a double
    cannot hold (Struct's numbers and JavaScript's are doubles), sent as its digits instead."""
    extra = {"epochs": 60, "lr": 0.001, "ok": True, "none": None, "big": 2**53 + 1, "small": -(2**53)}
    model = load_model(write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER, card=extra), "cpu", 1)
    assert {k: model.card[k] for k in extra} == {**extra, "big": str(2**53 + 1)}
    struct = model.card_struct
    assert (struct["epochs"], struct["ok"], struct["none"]) == (60, True, None)
    assert struct["big"] == model.card_strings["big"] == "9007199254740993" and struct["small"] == -(2**53)


def test_a_card_nested_deeper_than_protobuf_reads_is_refused(tmp_path):
    deep: object = 1
    for _ in range(MAX_CARD_DEPTH):
        deep = [deep]
    fits = write_version(tmp_path / "fits", GOOD_ENCODER, GOOD_DECODER, card={"deep": deep[0]})
    reply = vae_pb2.ModelInfo(model_card=load_model(fits, "cpu", 1).card_struct).SerializeToString()
    assert vae_pb2.ModelInfo.FromString(reply).model_card["deep"]  # a client parses it back
    version = write_version(tmp_path / "deep", GOOD_ENCODER, GOOD_DECODER, card={"deep": deep})
    with pytest.raises(ModelLoadError, match=rf"model\.json: nested deeper than {MAX_CARD_DEPTH} levels"):
        load_model(version, "cpu", 1)


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
    path = write_version_files(tmp_path, GOOD_ENCODER, GOOD_DECODER)
    (path / "encoder.onnx").write_bytes(b"not a model")
    card = json.loads((path / "model.json").read_text())
    card["files"]["encoder.onnx"]["sha256"] = hashlib.sha256(b"not a model").hexdigest()
    (path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: not an ONNX model \(malformed protobuf"):
        load_model(resolve(tmp_path, "m"), "cpu", 1)


def test_cuda_is_refused_on_a_host_without_it():
    if "CUDAExecutionProvider" in choose_providers("auto"):
        pytest.skip("this host really has CUDA")
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match=r"--device cuda: .*; use --device auto or --device cpu"):
        choose_providers("cuda")


def test_the_bytes_verified_are_the_bytes_served(tmp_path):
    """A graph swapped after its sha256 was checked must not be what ONNX Runtime loads."""
    version = write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER)  # weights all 0, sha256 on the card
    swapped = tmp_path / "swapped.onnx"
    linear_graph(swapped, **{**GOOD_ENCODER, "fill": 1.0})  # same names and widths, weights all 1
    os.replace(swapped, version.path / "encoder.onnx")
    model = load_model(version, "cpu", 1)
    mean, _ = model.encoder.run(np.ones((1, 6), np.float32))
    np.testing.assert_array_equal(mean, np.zeros((1, 2), np.float32))


def test_a_version_loaded_twice_is_verified_again(tmp_path):
    version = write_version(tmp_path, GOOD_ENCODER, GOOD_DECODER)
    load_model(version, "cpu", 1)
    linear_graph(version.path / "encoder.onnx", **{**GOOD_ENCODER, "fill": 1.0})
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: sha256 .* does not match the card's"):
        load_model(version, "cpu", 1)


def test_a_valid_protobuf_that_onnx_runtime_refuses(tmp_path):
    version = write_version(tmp_path, {**GOOD_ENCODER, "input_name": "x"}, GOOD_DECODER)
    model = onnx.load(str(version.path / "encoder.onnx"))
    model.graph.node[0].op_type = "NoSuchOperator"
    onnx.save(model, str(version.path / "encoder.onnx"))
    card_path = version.path / "model.json"
    card = json.loads(card_path.read_text())
    card["files"]["encoder.onnx"]["sha256"] = hashlib.sha256(
        (version.path / "encoder.onnx").read_bytes()
    ).hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r"encoder.onnx: ONNX Runtime cannot load it") as caught:
        load_model(resolve(tmp_path, "m"), "cpu", 1)
    assert "\n" not in str(caught.value)
