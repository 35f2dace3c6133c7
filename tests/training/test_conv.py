"""`vae-train --arch conv` and the new data sources, end to end: tiny runs of the real command,
their versions checked in ONNX Runtime and served by the real server."""

import gzip
import json

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from support import idx_bytes, start_vae_serve

from vae_serve._proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vae_serve.server.models.repository import Card, resolve
from vae_serve.tensor import from_tensor, to_tensor
from vae_serve.training.cli import main
from vae_serve.training.model import ConvVAE, ConvVAEConfig, Decoder, config_from_dict
from vae_serve.training.train import Checkpoint

TINY = ["--epochs", "1", "--batch-size", "16", "--latent-dim", "4", "--iwae-k", "2"]


def vae_train(tmp_path, *args: str) -> dict:
    """One in-process run of `vae-train`; returns the card of the version it published."""
    common = ["--model-repository", str(tmp_path / "models"), "--checkpoint", str(tmp_path / "last.pt")]
    result = CliRunner().invoke(main, [*TINY, *common, *map(str, args)])
    assert result.exit_code == 0, result.output
    if "--no-export" in args:
        return {}
    name = args[args.index("--name") + 1] if "--name" in args else "fashion-vae"
    return json.loads((tmp_path / "models" / name / "1" / "model.json").read_text())


def rgb_pictures(folder, count=64, size=16):
    """Discs of random colours on black: something a conv VAE can start to learn in one epoch."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:size, :size]
    for i in range(count):
        picture = np.zeros((size, size, 3), np.uint8)
        centre, radius = rng.integers(size // 4, 3 * size // 4, 2), rng.integers(2, size // 3)
        picture[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2] = rng.integers(40, 256, 3)
        Image.fromarray(picture).save(folder / f"{i:03d}.{('png', 'jpg', 'webp')[i % 3]}")


def sessions(version):
    return [
        ort.InferenceSession(str(version / f), providers=["CPUExecutionProvider"])
        for f in ("encoder.onnx", "decoder.onnx")
    ]


@pytest.mark.parametrize(
    ("shape", "widths"), [((28, 28, 1), (8, 16, 32)), ((27, 31, 3), (4, 8)), ((64, 64, 3), (4, 8, 8, 8))]
)
def test_conv_vae_keeps_any_picture_size(shape, widths):
    model = ConvVAE(ConvVAEConfig(shape, widths, 5))
    x = torch.rand(3, model.config.input_dim)
    logits, kl = model(x)
    mean, logvar = model.encode(x)
    assert logits.shape == x.shape and mean.shape == logvar.shape == (3, 5) and kl.shape == (3,)
    assert model.decode(torch.zeros(2, 3, 5)).shape == (2, 3, model.config.input_dim)  # IWAE's [k, B, L]
    assert config_from_dict(model.config.to_dict()) == model.config


def test_conv_layout_is_channel_last():
    """A row is a picture [H, W, C] flattened: the encoder must read it so, whatever the convolutions want."""
    torch.manual_seed(0)
    model = ConvVAE(ConvVAEConfig((4, 4, 3), (2,), 2))
    picture = torch.rand(4, 4, 3)
    mean, _ = model.encode(picture.reshape(1, -1))
    first_conv = model.encoder_body[0]
    direct = model.encoder_head(model.encoder_body(picture.permute(2, 0, 1)[None]))
    assert torch.allclose(mean, direct[:, :2])
    assert first_conv.in_channels == 3


def test_too_many_convolutions_for_the_picture():
    with pytest.raises(ValueError, match=r"8x8 pictures are too small for 4 strided convolutions"):
        ConvVAEConfig((8, 8, 1), (4, 4, 4, 4), 2)


def test_conv_rgb_pictures_train_and_export(tmp_path):
    rgb_pictures(tmp_path / "pics")
    card = vae_train(
        tmp_path,
        "--data",
        tmp_path / "pics",
        "--arch",
        "conv",
        "--conv-widths",
        "8,16",
        "--name",
        "rgb",
        "--workers",
        "1",
    )
    assert (card["arch"], card["channels"], card["image_shape"], card["input_dim"]) == (
        "conv",
        3,
        [16, 16, 3],
        768,
    )
    assert card["architecture"] == {
        "arch": "conv",
        "image_shape": [16, 16, 3],
        "widths": [8, 16],
        "latent_dim": 4,
        "input_dim": 768,
        "prior_components": 0,
    }
    assert (card["train_images"], card["test_images"]) == (58, 6)
    assert "held out for test" in card["dataset"]
    assert len(card["principal_directions"]["vectors"][0]) == 4
    Card.model_validate(card)
    version = tmp_path / "models" / "rgb" / "1"
    resolve(tmp_path / "models", "rgb")  # the server reads a colour card as it is
    encoder, decoder = sessions(version)
    for rows in (1, 5):
        mean, logvar = encoder.run(
            ["mean", "logvar"], {"x": np.random.default_rng(0).random((rows, 768), dtype=np.float32)}
        )
        (x,) = decoder.run(["x"], {"z": mean})
        assert mean.shape == logvar.shape == (rows, 4)
        assert x.shape == (rows, 768) and x.min() >= 0 and x.max() <= 1
    state = Checkpoint.load(tmp_path / "last.pt")
    assert state.config == ConvVAEConfig((16, 16, 3), (8, 16), 4)


def test_grey_conv_from_npy_is_served(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((80, 12, 12)) < 0.3).astype(np.float32)
    np.save(tmp_path / "grey.npy", images)
    card = vae_train(
        tmp_path, "--data", tmp_path / "grey.npy", "--arch", "conv", "--conv-widths", "4,8", "--name", "grey"
    )
    assert (card["image_shape"], card["channels"], card["arch"]) == ([12, 12], 1, "conv")
    assert (card["train_images"], card["test_images"]) == (72, 8)
    z = rng.standard_normal((6, 4)).astype(np.float32)
    (direct,) = sessions(tmp_path / "models" / "grey" / "1")[1].run(["x"], {"z": z})
    state = Checkpoint.load(tmp_path / "last.pt")
    model = ConvVAE(state.config)
    model.load_state_dict(state.model)
    with torch.no_grad():
        expected = Decoder(model.eval())(torch.from_numpy(z)).numpy()
    proc, port = start_vae_serve(
        "--model-repository",
        str(tmp_path / "models"),
        "--model",
        "grey",
        "--port",
        "0",
        "--metrics-port",
        "0",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = vae_pb2_grpc.VAEServiceStub(channel)
            info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=30)
            reply = stub.Decode(vae_pb2.DecodeRequest(z=to_tensor(z)), timeout=30)
    finally:
        proc.terminate()
        proc.wait(30)
    assert (info.input_dim, info.latent_dim, list(info.image_shape)) == (144, 4, [12, 12])
    served = from_tensor(reply.x, "x")
    assert served.shape == (6, 144)
    np.testing.assert_allclose(served, direct, atol=1e-6)
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_idx_directory_trains_the_mlp_as_before(tmp_path):
    images = (np.random.default_rng(0).random((48, 8, 8)) * 255).astype(np.uint8)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images[:40])))
    (tmp_path / "idx" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images[40:]))
    card = vae_train(tmp_path, "--data", tmp_path / "idx", "--hidden", "16")
    assert (card["arch"], card["image_shape"], card["channels"], card["input_dim"]) == ("mlp", [8, 8], 1, 64)
    assert card["architecture"] == {
        "arch": "mlp",
        "input_dim": 64,
        "hidden": [16],
        "latent_dim": 4,
        "encoder_hidden": [16],
        "prior_components": 0,
    }
    assert card["dataset"] == f"IDX files in {tmp_path / 'idx'}"
    assert (card["train_images"], card["test_images"]) == (40, 8)


def test_data_dir_still_works(tmp_path):
    images = np.zeros((8, 4, 4), np.uint8)
    (tmp_path / "idx").mkdir()
    for split in ("train", "t10k"):
        (tmp_path / "idx" / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(images))
    card = vae_train(tmp_path, "--data-dir", tmp_path / "idx", "--hidden", "8", "--iwae-k", "0")
    assert card["dataset"] == f"IDX files in {tmp_path / 'idx'}"


def test_resume_refuses_other_data(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((8, 4, 4), np.uint8))
    np.save(tmp_path / "b.npy", np.zeros((8, 6, 6), np.uint8))
    vae_train(tmp_path, "--data", tmp_path / "a.npy", "--hidden", "8", "--no-export")
    resume = ["--resume", str(tmp_path / "last.pt"), "--checkpoint", str(tmp_path / "again.pt")]
    result = CliRunner().invoke(main, [*TINY, "--data", str(tmp_path / "b.npy"), *resume, "--no-export"])
    assert result.exit_code == 1
    assert "a model of 16 values an image, but the data has 36 (6x6x1)" in result.output
