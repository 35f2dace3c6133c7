"""`vae-client` as a person runs it, against a real server: its own code, exit status and streams
through click's runner, and in a real process where the process is the point (every command's
help, a target that never answers)."""

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import DEFAULT_VERSION, free_port, idx_bytes

from vae_serve.images import MAX_INPUT_VALUES

CLI = [sys.executable, "-m", "vae_serve.client.cli"]


@pytest.fixture(scope="module")
def vae_client(running):
    from click.testing import CliRunner

    from vae_serve.client.cli import main

    def run(*args: str, target: str = running.target) -> subprocess.CompletedProcess:
        result = CliRunner().invoke(main, ["--target", target, *args], prog_name="vae-client")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback the real command would have printed
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)

    return run


def picture(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.asarray(img)


def test_info_and_health(vae_client):
    done = vae_client("info")
    assert done.returncode == 0, done.stderr
    for expected in (
        f"fashion-vae version {DEFAULT_VERSION}",
        "z [N, 32]",
        "CPUExecutionProvider",
        "health:    SERVING",
        "test_neg_elbo_nats: 234.143",
    ):
        assert expected in done.stdout
    health = vae_client("health")
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")


def test_info_prints_the_card_with_its_types(vae_client):
    """Numbers as numbers, lists as lists; an object too wide for a line opens up below its key,
    and a long list is cut short with its length."""
    done = vae_client("info")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for expected in ("epochs: 40", "lr: 0.002", "image_shape: [28, 28]", "seed: 0", "name: fashion-vae"):
        assert f"  {expected}" in lines, done.stdout
    at = lines.index("  principal_directions:")
    below = lines[at + 1 : at + 5]
    assert [line.split(":")[0] for line in below] == ["    mean", "    source", "    std", "    vectors"]
    assert below[0].startswith("    mean: [0.077574, ") and below[0].endswith(", ...] (32 items)")
    assert below[1] == "    source: test-set posterior means"
    assert max(len(line) for line in lines) <= 100


def test_help_says_what_each_default_means(vae_client):
    """No `[default: ""]`: an option left empty says what that means."""
    texts = {command: vae_client(*command, "--help") for command in [(), ("health",), ("sample",)]}
    assert all(done.returncode == 0 for done in texts.values())
    everything = " ".join(" ".join(done.stdout.split()) for done in texts.values())
    assert '""' not in everything and "''" not in everything
    main, health, sample = (" ".join(texts[c].stdout.split()) for c in [(), ("health",), ("sample",)])
    assert "Pin a loaded model version. [default: (the latest)]" in main
    assert "[default: (none)]" in main  # --traceparent
    assert "Service name to check. [default: (the whole server)]" in health
    assert "Grid columns. [default: (square); x>=1]" in sample


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

    images = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", limit=2)
    Image.fromarray(images[0]).save(tmp_path / "a.png")  # an ankle boot
    Image.fromarray(images[1]).save(tmp_path / "b.png")  # a pullover
    out = tmp_path / "path.png"
    done = vae_client(
        "interpolate",
        "--a",
        str(tmp_path / "a.png"),
        "--b",
        str(tmp_path / "b.png"),
        "--steps",
        "6",
        "-o",
        str(out),
    )
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


@pytest.mark.slow
def test_encode_decode_npy_round_trip(vae_client, tmp_path, fashion_mnist_dir):
    from vae_serve.idx import read_idx

    # The test set's first 1100 pictures, gzipped as it is: three slices of 512 rows, the last one short.
    source = tmp_path / "t10k-images-idx3-ubyte.gz"
    source.write_bytes(gzip.compress(idx_bytes(read_idx(fashion_mnist_dir / source.name, limit=1100))))
    mean, logvar, decoded = tmp_path / "mean.npy", tmp_path / "logvar.npy", tmp_path / "x.npy"
    done = vae_client("encode", "-i", str(source), "-o", str(mean), "--logvar-output", str(logvar))
    assert done.returncode == 0, done.stderr
    assert np.load(mean).shape == np.load(logvar).shape == (1100, 32)
    done = vae_client("decode", "-i", str(mean), "-o", str(decoded), "--png", str(tmp_path / "x.png"))
    assert done.returncode == 0, done.stderr
    x = np.load(decoded)
    assert x.shape == (1100, 784) and x.min() >= 0 and x.max() <= 1
    assert picture(tmp_path / "x.png").shape == (33 * 58 + 2, 34 * 58 + 2)  # 1100 pictures, near square


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

    one = read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", limit=1)
    np.save(tmp_path / "same.npy", np.repeat(one.reshape(1, 784) / 255.0, 600, axis=0))
    done = vae_client(
        "reconstruct",
        "-i",
        str(tmp_path / "same.npy"),
        "--limit",
        "600",
        "--seed",
        "3",
        "-o",
        str(tmp_path / "r.png"),
    )
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


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single 'Error: ...' line a failed command printed (and nothing else, no traceback)."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, write_png, write_npy) -> dict[str, Path]:
    """Small files that once cost gigabytes: an IDX gzip bomb over the input cap, a 16-bit picture
    of 12000x12000 pixels (280 KB), and a .npy header claiming 10**12 rows."""
    folder = tmp_path_factory.mktemp("hostile")
    records = MAX_INPUT_VALUES // 784 + 1  # 67 MB of zeros, 65 KB compressed
    with gzip.open(folder / "bomb.gz", "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, records, 28, 28))
        for start in range(0, records, 1000):
            f.write(bytes(784 * min(1000, records - start)))
    write_png(folder / "huge.png", 12000, 12000, bit_depth=16)
    write_npy(
        folder / "huge.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 784), }",
        bytes(4096),
    )
    return {"bomb": folder / "bomb.gz", "png": folder / "huge.png", "npy": folder / "huge.npy"}


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["encode", "-i", "{bomb}"], "declares 67109616 bytes to read, above the limit of 67108864"),
        (["reconstruct", "-i", "{png}"], "picture of 12000x12000 pixels is above the limit"),
        (["interpolate", "--a", "{png}", "--b", "{png}"], "picture of 12000x12000 pixels is above the limit"),
        (["decode", "-i", "{npy}"], "truncated or padded (4096 data bytes, header [1000000000000, 784]"),
        (["reconstruct", "-i", "{npy}"], "truncated or padded (4096 data bytes"),
    ],
)
def test_hostile_inputs_are_one_line(vae_client, hostile, tmp_path, command, message):
    args = [arg.format(**{k: str(v) for k, v in hostile.items()}) for arg in command]
    line = _one_line_error(vae_client(*args, "-o", str(tmp_path / "out")))
    assert message in line
    assert not (tmp_path / "out").exists()


def test_a_gzip_bomb_costs_only_the_images_asked_for(vae_client, hostile, tmp_path):
    done = vae_client(
        "reconstruct", "-i", str(hostile["bomb"]), "--limit", "1", "-o", str(tmp_path / "r.png")
    )
    assert done.returncode == 0, done.stderr
    assert picture(tmp_path / "r.png").shape == (58 + 2, 2 * 58 + 2)


def _outputs_over_inputs(folder: Path) -> list[tuple[list[str], str]]:
    x, z, link = folder / "x.npy", folder / "z.npy", folder / "link.npy"
    hard, png = folder / "hard.npy", folder / "a.png"
    return [
        (["encode", "-i", str(x), "-o", str(x)], f"-o {x}: is the input -i {x}; refusing to overwrite it"),
        (["encode", "-i", str(x), "-o", str(link)], f"-o {link}: is the input -i {x}"),  # a symlink to it
        (["encode", "-i", str(x), "-o", str(hard)], f"-o {hard}: is the input -i {x}"),  # a hard link
        (["encode", "-i", str(x), "--logvar-output", str(x)], f"--logvar-output {x}: is the input -i {x}"),
        (
            ["encode", "-i", str(x), "-o", str(z), "--logvar-output", str(folder / "." / "z.npy")],
            f"--logvar-output {folder / '.' / 'z.npy'}: is also -o; give each output its own file",
        ),
        (["decode", "-i", str(z), "-o", str(z)], f"-o {z}: is the input -i {z}"),
        (
            ["decode", "-i", str(z), "-o", str(folder / "d.npy"), "--png", str(folder / "d.npy")],
            f"--png {folder / 'd.npy'}: is also -o",
        ),
        (["decode", "-i", str(z), "--png", str(link)], f"--png {link}: is the input -i {z}"),
        (["reconstruct", "-i", str(png), "-i", str(x), "-o", str(png)], f"-o {png}: is the input -i {png}"),
        (["interpolate", "--a", str(x), "--b", str(png), "-o", str(png)], f"-o {png}: is the input --b"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_outputs_never_overwrite_inputs_or_each_other(vae_client, tmp_path, case):
    args, message = _outputs_over_inputs(tmp_path)[case]
    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.float32))
    (tmp_path / "link.npy").symlink_to(tmp_path / "x.npy" if "encode" in args else tmp_path / "z.npy")
    np.save(tmp_path / "z.npy", np.zeros((1, 32), np.float32))
    os.link(tmp_path / "x.npy", tmp_path / "hard.npy")
    Image.new("L", (28, 28), 255).save(tmp_path / "a.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # Refused before the server is asked anything: a dead target gives the same answer.
    line = _one_line_error(vae_client("--retries", "0", *args, target=f"127.0.0.1:{free_port()}"))
    assert line == f"Error: {message}" or message in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def nothing_answers(target: str, *args: str) -> str:
    """The one error line for a target that does not answer. With a 600 s deadline, a client that
    waited for the deadline would hit the subprocess timeout instead of saying so."""
    done = subprocess.run(
        [*CLI, "--target", target, "--timeout", "600", *args, "info"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"Error: UNAVAILABLE: nothing answers at {target} ("), lines[0]
    return lines[0]


def test_nothing_listening_is_said_at_once():
    assert nothing_answers(f"127.0.0.1:{free_port()}").endswith("(connection refused)")


def test_unresolvable_name_is_said_at_once():
    assert nothing_answers("nonexistent.invalid:50051").endswith("(name not resolved)")


def test_tls_to_a_plaintext_server_is_said_at_once(running):
    assert "(TLS handshake failed" in nothing_answers(running.target, "--tls")
