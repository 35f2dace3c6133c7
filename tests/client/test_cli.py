"""`vae-client` as a person runs it, in a real process against a real server."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from support import free_port

CLI = [sys.executable, "-m", "vae_serve.client.cli"]


@pytest.fixture(scope="module")
def vae_client(running):
    def run(*args: str, target: str = running.target) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "--target", target, *args], capture_output=True, text=True, timeout=120)

    return run


def picture(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.asarray(img)


def test_info_and_health(vae_client):
    done = vae_client("info")
    assert done.returncode == 0, done.stderr
    for expected in ("fashion-vae version 1", "z [N, 32]", "CPUExecutionProvider", "health:    SERVING",
                     "test_neg_elbo_nats: 236"):  # fmt: skip
        assert expected in done.stdout
    health = vae_client("health")
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")


def test_sample_grid(vae_client, tmp_path):
    done = vae_client("sample", "-n", "64", "--seed", "7", "-o", str(tmp_path / "s.png"))
    assert done.returncode == 0, done.stderr
    grid = picture(tmp_path / "s.png")
    assert grid.shape == (8 * 58 + 2, 8 * 58 + 2)  # 8x8 tiles of 28*2 px with 2 px padding
    tile = grid[2:58, 2:58]
    assert tile.std() > 20 and 5 < grid.mean() < 200  # a picture, not a blank
    again = vae_client("sample", "-n", "64", "--seed", "7", "-o", str(tmp_path / "t.png"))
    assert again.returncode == 0
    np.testing.assert_array_equal(picture(tmp_path / "t.png"), grid)


def test_reconstruct_from_idx(vae_client, tmp_path, fashion_mnist_dir):
    source = fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"
    done = vae_client("reconstruct", "-i", str(source), "--limit", "10", "-o", str(tmp_path / "r.png"))
    assert done.returncode == 0, done.stderr
    grid = picture(tmp_path / "r.png")
    assert grid.shape == (2 * 58 + 2, 16 * 58 + 2)  # 10 pairs: 8 per row, originals beside reconstructions
    original, reconstruction = grid[2:58, 2:58].astype(float), grid[2:58, 60:116].astype(float)
    assert original.std() > 20 and reconstruction.std() > 20
    assert np.corrcoef(original.ravel(), reconstruction.ravel())[0, 1] > 0.8


def test_interpolate_between_pictures(vae_client, tmp_path, fashion_mnist_dir, client):
    from vae_serve.idx import read_idx

    images = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")
    Image.fromarray(images[0]).save(tmp_path / "a.png")  # an ankle boot
    Image.fromarray(images[1]).save(tmp_path / "b.png")  # a pullover
    out = tmp_path / "path.png"
    done = vae_client("interpolate", "--a", str(tmp_path / "a.png"), "--b", str(tmp_path / "b.png"),
                      "--steps", "6", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    grid = picture(out)
    assert grid.shape == (58 + 2, 6 * 58 + 2)
    # The ends are the decoded posterior means of the two pictures (the grid doubles each pixel).
    mean, _ = client.encode(images[:2].reshape(2, 784).astype(np.float32) / 255)
    ends = np.round(client.decode(mean) * 255).reshape(2, 28, 28)
    first, last = grid[2:58:2, 2:58:2], grid[2:58:2, 5 * 58 + 2 : 6 * 58 : 2]
    assert np.abs(first - ends[0]).max() <= 1 and np.abs(last - ends[1]).max() <= 1
    middle = grid[2:58:2, 2 * 58 + 2 : 3 * 58 : 2].astype(float)
    assert np.abs(middle - ends[0]).mean() > 5 and np.abs(middle - ends[1]).mean() > 5


def test_encode_decode_npy_round_trip(vae_client, tmp_path, fashion_mnist_dir):
    source = fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"
    mean, logvar, decoded = tmp_path / "mean.npy", tmp_path / "logvar.npy", tmp_path / "x.npy"
    done = vae_client("encode", "-i", str(source), "-o", str(mean), "--logvar-output", str(logvar))
    assert done.returncode == 0, done.stderr
    assert np.load(mean).shape == np.load(logvar).shape == (10000, 32)
    done = vae_client("decode", "-i", str(mean), "-o", str(decoded), "--png", str(tmp_path / "x.png"))
    assert done.returncode == 0, done.stderr
    x = np.load(decoded)
    assert x.shape == (10000, 784) and x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reconstruct", "-i", "/nonexistent.png"], "/nonexistent.png: no such file"),
        (["decode", "-i", "/etc/hostname"], "not a readable .npy array"),
    ],
)
def test_bad_input_files_are_one_line(vae_client, args, message):
    done = vae_client(*args)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: {done.stderr.strip().removeprefix('Error: ')}"]
    assert message in done.stderr


def test_server_down_is_one_line(vae_client):
    done = vae_client("--retries", "0", "info", target=f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("Error: UNAVAILABLE")


def test_deadline_is_one_line(vae_client, tmp_path):
    done = vae_client("--timeout", "0.001", "sample", "-n", "4096", "-o", str(tmp_path / "s.png"))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("Error: DEADLINE_EXCEEDED")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "nan", "info"], "timeout must be a finite number"),
        (["--ca-file", "/etc/hostname", "info"], "UNAVAILABLE"),
        (["sample", "--seed", "-1"], "Invalid value for '--seed'"),
    ],
)
def test_bad_options_are_one_line(vae_client, args, message):
    done = vae_client("--retries", "0", *args)
    assert done.returncode in (1, 2)
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith(("Error", "Usage", "Try"))]
    assert len([line for line in lines if line.startswith("Error")]) == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_outputs_land_exactly_where_asked(vae_client, tmp_path, fashion_mnist_dir):
    source = fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"
    out = tmp_path / "deep" / "latents"
    done = vae_client("encode", "-i", str(source), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert np.load(out).shape == (10000, 32)
    assert f"wrote {out} (10000 rows)" in done.stderr


def test_reconstruct_slices_draw_independent_noise(vae_client, tmp_path, fashion_mnist_dir):
    # 600 copies of one image span two 512-row slices; a shared seed per slice would repeat rows.
    from vae_serve.idx import read_idx

    one = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")[:1]
    np.save(tmp_path / "same.npy", np.repeat(one.reshape(1, 784) / 255.0, 600, axis=0))
    done = vae_client("reconstruct", "-i", str(tmp_path / "same.npy"), "--limit", "600", "--seed", "3",
                      "-o", str(tmp_path / "r.png"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    grid = picture(tmp_path / "r.png")
    tile = 58  # 56 px image + 2 px padding; pairs of (original, reconstruction), 8 pairs a row

    def recon(i: int) -> np.ndarray:
        row, col = divmod(i, 8)
        top, left = 2 + row * tile, 2 + (2 * col + 1) * tile
        return grid[top : top + 56, left : left + 56]

    assert not np.array_equal(recon(0), recon(512))


def test_help_on_every_command():
    for command in ("info", "health", "sample", "reconstruct", "interpolate", "encode", "decode"):
        done = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Usage:" in done.stdout
