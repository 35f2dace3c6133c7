"""Bring your own VAE: `export_vae` publishes any pair of torch modules that meets the contract,
and `vae-train card` writes the card for graphs exported elsewhere; the real server serves both."""

import json
import re
import subprocess
import sys

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from support import linear_graph, start_vae_serve
from torch import nn

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.models.repository import Card, resolve
from vae_serve.tensor import from_tensor, to_tensor
from vae_serve.training import ExportError, export_vae
from vae_serve.training.cli import main

IMAGE_SHAPE = [8, 6]  # grey: [H, W]; D = 48
LATENT = 3


class TinyEncoder(nn.Module):
    """Not the project's model: any module with the contract's signature."""

    def __init__(self, width: int = 48, latent: int = LATENT) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, 16), nn.Tanh())
        self.mean = nn.Linear(16, latent)
        self.logvar = nn.Linear(16, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(x)
        return self.mean(hidden), self.logvar(hidden)


class TinyDecoder(nn.Module):
    def __init__(self, latent: int = LATENT, width: int = 48, squash: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, 16), nn.ReLU(), nn.Linear(16, width))
        self.squash = squash

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.net(z)
        return torch.sigmoid(logits) if self.squash else logits


@pytest.fixture(scope="module")
def modules():
    torch.manual_seed(0)
    return TinyEncoder(), TinyDecoder()


@pytest.fixture(scope="module")
def exported(modules, tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    encoder, decoder = modules
    images = np.random.default_rng(0).random((40, 48), dtype=np.float32)
    path = export_vae(
        encoder,
        decoder,
        image_shape=IMAGE_SHAPE,
        model_repository=root,
        name="mine",
        card={"dataset": "noise", "notes": {"why": "a test"}},
        arch="tiny-mlp",
        directions_images=images,
    )
    return root, path


def serve(root, name):
    proc, port = start_vae_serve(
        "--model-repository", str(root), "--model", name, "--port", "0", "--metrics-port", "0"
    )
    return proc, f"127.0.0.1:{port}"


def test_export_vae_writes_a_version_the_server_reads(exported, modules):
    root, path = exported
    assert path == root / "mine" / "1"
    card = json.loads((path / "model.json").read_text())
    assert card["image_shape"] == IMAGE_SHAPE
    assert (card["input_dim"], card["latent_dim"], card["channels"], card["arch"]) == (
        48,
        LATENT,
        1,
        "tiny-mlp",
    )
    assert (card["name"], card["version"], card["dataset"], card["notes"]) == (
        "mine",
        "1",
        "noise",
        {"why": "a test"},
    )
    assert all(diff <= 1e-5 for diff in card["parity_max_abs_diff"].values())
    assert len(card["principal_directions"]["vectors"][0]) == LATENT
    Card.model_validate(card)
    resolve(root, "mine")  # hashes and sizes as the server checks them
    encoder, decoder = modules
    assert encoder.training and decoder.training  # the caller's modules as they were
    assert [p.name for p in path.parent.iterdir()] == ["1"]  # nothing left from staging


def test_served_decode_matches_torch(exported, modules):
    root, _ = exported
    _, decoder = modules
    z = np.random.default_rng(1).standard_normal((5, LATENT), dtype=np.float32)
    proc, target = serve(root, "mine")
    try:
        with grpc.insecure_channel(target) as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=30)
            assert list(info.image_shape) == IMAGE_SHAPE
            reply = stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(z)), timeout=30)
    finally:
        proc.terminate()
        proc.wait(30)
    x = from_tensor(reply.x, "x")
    with torch.no_grad():
        expected = decoder.eval()(torch.from_numpy(z)).numpy()
    decoder.train()
    assert x.shape == (5, 48)
    np.testing.assert_allclose(x, expected, atol=1e-4)


def test_a_taken_version_is_refused(exported, modules):
    root, _ = exported
    with pytest.raises(ExportError, match=r"mine/1 already exists"):
        export_vae(*modules, image_shape=IMAGE_SHAPE, model_repository=root, name="mine", version="1")


@pytest.mark.parametrize(
    ("encoder", "decoder", "options", "expected"),
    [
        (lambda: nn.Linear(48, 6), TinyDecoder, {}, r"the encoder must return a tuple \(mean, logvar\)"),
        (
            TinyEncoder,
            lambda: TinyDecoder(width=40),
            {},
            r"decoder: gave torch.float32 \[2, 40\] for z \[2, 3\]; expected float32 \[2, 48\]",
        ),
        (lambda: TinyEncoder(width=40), TinyDecoder, {}, r"encoder\(x \[2, 48\]\) failed: RuntimeError"),
        (TinyEncoder, TinyDecoder, {"image_shape": [48]}, r"expected \[H, W\] or \[H, W, C\]"),
        (
            TinyEncoder,
            TinyDecoder,
            {"card": {"latent_dim": 4}},
            r"card\['latent_dim'\] = 4 contradicts the modules' 3",
        ),
        (TinyEncoder, TinyDecoder, {"name": "../up"}, r"model name '../up'"),
        (TinyEncoder, TinyDecoder, {"version": "01"}, r"version '01'"),
    ],
)
def test_modules_off_the_contract_are_refused_before_export(tmp_path, encoder, decoder, options, expected):
    arguments = {"image_shape": IMAGE_SHAPE, "model_repository": tmp_path, "name": "m", **options}
    with pytest.raises(ExportError, match=expected):
        export_vae(encoder(), decoder(), **arguments)
    assert not (tmp_path / "m").exists() or list((tmp_path / "m").iterdir()) == []


def test_decoder_values_outside_the_unit_interval_are_refused(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(
        ExportError, match=r"decoder\.onnx: 'x' takes values from .* \(end the decoder with a sigmoid\)"
    ):
        export_vae(
            TinyEncoder(),
            TinyDecoder(squash=False),
            image_shape=IMAGE_SHAPE,
            model_repository=tmp_path,
            name="m",
        )
    assert list((tmp_path / "m").iterdir()) == []  # the staging directory went with the failure


# --- `vae-train card`: graphs exported elsewhere ------------------------------------------------


def graphs(folder, encoder=None, decoder=None):
    """Tiny real ONNX graphs for 2x3 pictures and 2 latents (tests/support.py's linear_graph)."""
    folder.mkdir(parents=True, exist_ok=True)
    linear_graph(
        folder / "encoder.onnx",
        **{"input_name": "x", "width": 6, "outputs": {"mean": 2, "logvar": 2}, **(encoder or {})},
    )
    linear_graph(
        folder / "decoder.onnx", **{"input_name": "z", "width": 2, "outputs": {"x": 6}, **(decoder or {})}
    )
    return folder


def card_command(*args):
    return CliRunner().invoke(main, ["card", *map(str, args)])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_card_for_graphs_exported_elsewhere(tmp_path):
    version = graphs(tmp_path / "theirs" / "4")
    np.save(tmp_path / "pictures.npy", np.random.default_rng(0).random((30, 2, 3), dtype=np.float32))
    result = card_command(version, "--image-shape", "2x3", "--data", tmp_path / "pictures.npy")
    assert result.exit_code == 0, result.output
    assert "x [batch, 6] (2x3 pictures) -> mean, logvar [batch, 2]" in result.output
    card = json.loads((version / "model.json").read_text())
    assert (card["name"], card["version"], card["arch"], card["channels"]) == ("theirs", "4", "custom", 1)
    assert len(card["principal_directions"]["mean"]) == 2
    resolve(tmp_path, "theirs")  # the server reads the card and verifies the hashes
    # Run again after a graph changed: the hashes follow, the card's other fields stay.
    card["notes"] = "kept"
    (version / "model.json").write_text(json.dumps(card))
    graphs(version, encoder={"fill": 0.1})
    assert card_command(version).exit_code == 0
    again = json.loads((version / "model.json").read_text())
    assert again["notes"] == "kept" and again["image_shape"] == [2, 3]
    assert again["files"]["encoder.onnx"] != card["files"]["encoder.onnx"]
    resolve(tmp_path, "theirs")


@pytest.mark.parametrize(
    ("encoder", "decoder", "shape", "expected"),
    [
        (
            {"outputs": {"mu": 2, "logvar": 2}},
            {},
            "2x3",
            r"encoder\.onnx: outputs are \['logvar', 'mu'\], expected \['logvar', 'mean'\]",
        ),
        (
            {"input_name": "pixels"},
            {},
            "2x3",
            r"encoder\.onnx: inputs are \['pixels'\], expected one named 'x'",
        ),
        ({"batch": 4}, {}, "2x3", r"encoder\.onnx: 'x' has a fixed batch axis \[4, 6\]; export it dynamic"),
        ({}, {}, "3x3", r"encoder\.onnx: 'x' is 6 wide, but image_shape \[3, 3\] has D = 9"),
        ({}, {"width": 3}, "2x3", r"decoder\.onnx: 'z' is 3 wide, the encoder's latents 2"),
        ({}, {"fill": -1.0}, "2x3", r"decoder\.onnx: 'x' takes values from .* in \[0, 1\]"),
        ({"external_data": "weights.bin"}, {}, "2x3", r"encoder\.onnx: its weights are in external data"),
    ],
)
def test_card_refuses_graphs_off_the_contract(tmp_path, encoder, decoder, shape, expected):
    version = graphs(tmp_path / "m" / "1", encoder, decoder)
    line = one_error_line(card_command(version, "--image-shape", shape))
    assert re.search(expected, line), line
    assert not (version / "model.json").exists()


def test_card_needs_graphs_and_a_shape(tmp_path):
    version = graphs(tmp_path / "m" / "1")
    assert "no image shape; pass --image-shape" in one_error_line(card_command(version))
    (version / "decoder.onnx").unlink()
    assert "decoder.onnx: missing" in one_error_line(card_command(version, "--image-shape", "2x3"))
    (version / "decoder.onnx").write_bytes(b"not onnx")
    assert "decoder.onnx: not an ONNX model" in one_error_line(card_command(version, "--image-shape", "2x3"))


def test_the_real_command_refuses_in_one_line(tmp_path):
    version = graphs(tmp_path / "m" / "1", decoder={"batch": 1})
    cmd = [sys.executable, "-m", "vae_serve.training.cli", "card", str(version), "--image-shape", "2x3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: {version / 'decoder.onnx'}: 'z' has a fixed batch axis [1, 2]; export it dynamic"
    ]


def test_exported_graphs_run_at_any_batch(exported):
    _, path = exported
    session = ort.InferenceSession(str(path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    for rows in (1, 9):
        mean, logvar = session.run(["mean", "logvar"], {"x": np.zeros((rows, 48), np.float32)})
        assert mean.shape == logvar.shape == (rows, LATENT)
