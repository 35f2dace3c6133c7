"""`vae-train` as a person meets it: bad input ends in one line and a non-zero exit."""

import gzip
import logging
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest


def run_train(*args: str, cwd) -> subprocess.CompletedProcess:
    """The real command, in a process of its own (torch imported afresh): for the cases whose
    error is found where only the real process goes (a DataLoader worker, the interpreter's exit)."""
    cmd = [sys.executable, "-m", "vae_serve.training.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert expected in errors[0]


def assert_one_error(result, expected: str) -> None:
    """`invoke_train`'s run ended on one line naming `expected` and a non-zero status."""
    assert result.exit_code != 0, result.output
    assert expected in one_error_line(result)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Runs in process start where the real command would: a default path is never this tree's."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("flag", ["--data", "--data-dir"])
def test_missing_data_dir(tmp_path, flag):
    result = invoke_train(flag, str(tmp_path / "absent"))
    assert_one_error(result, "data directory not found; install Debian's package")
    assert ("--data-dir is deprecated" in result.output or "'data_dir' is deprecated" in result.output) == (
        flag == "--data-dir"
    )


def test_data_dir_is_marked_deprecated_in_help():
    from click.testing import CliRunner

    from vae_serve.training.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "The old name of --data. (DEPRECATED: use --data)" in " ".join(result.output.split())
    both = CliRunner().invoke(main, ["--data", "a", "--data-dir", "b"])
    assert both.exit_code == 2
    assert "--data-dir is the old name of --data: pass one of them" in both.output


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels and holds almost none (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def bad_pictures(folder, problem):
    """Eight good 8x8 pictures, and one with `problem`."""
    from PIL import Image

    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(folder / f"{i}.png")
    if problem == "corrupt":
        (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    elif problem == "size":
        Image.new("RGB", (9, 8)).save(folder / "bad.png")
    elif problem == "bomb":
        (folder / "bad.png").write_bytes(png_header(50_000, 50_000))
    elif problem == "cut":  # a header that reads, pixel data that does not: found when decoded
        noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / "bad.png", compress_level=0)
        whole = (folder / "bad.png").read_bytes()
        (folder / "bad.png").write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("corrupt", "bad.png: not a readable picture (not PNG, JPEG or WebP)"),
        ("size", "bad.png: 8x9 pixels, but "),
        ("bomb", "bad.png: picture of more than 67108864 pixels refused before decoding"),
        ("cut", "bad.png: not a readable picture ("),
    ],
)
def test_bad_pictures_end_in_one_line(tmp_path, problem, expected):
    """A picture found wrong in its header stops the run before training, one found wrong when
    decoded (in a DataLoader worker) stops it then; one line either way. The worker's case runs
    the real command: its error crosses a process boundary on its way to the line."""
    bad_pictures(tmp_path / "pics", problem)
    tiny = ["--epochs", "1", "--hidden", "4", "--latent-dim", "2", "--iwae-k", "0", "--test-fraction", "0.5"]
    args = ["--data", str(tmp_path / "pics"), "--workers", "1", *tiny, "--no-export"]
    if problem == "cut":
        assert_one_line_error(run_train(*args, cwd=tmp_path), expected)
    else:
        assert_one_error(invoke_train(*args), expected)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (
            np.full((4, 3, 3), 2.0, np.float32),
            "x.npy: float images must lie in [0, 1], found values from 2 to 2",
        ),
        (np.zeros((4, 3, 3), np.int16), "x.npy: images must be uint8, or float in [0, 1]; found dtype int16"),
    ],
)
def test_bad_arrays_end_in_one_line(tmp_path, array, expected):
    np.save(tmp_path / "x.npy", array)
    assert_one_error(invoke_train("--data", str(tmp_path / "x.npy")), expected)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--image-size", "32by32"], "expected HxW (or one number for a square) of positive integers"),
        (["--image-size", "0x4"], "expected HxW (or one number for a square) of positive integers"),
        (["--channels", "2"], "'2' is not one of '1', '3'"),
        (["--arch", "rnn"], "'rnn' is not one of 'conv', 'mlp'"),
        (["--test-fraction", "1"], "0<x<1"),
    ],
)
def test_bad_data_flags(args, expected):
    result = invoke_train(*args)
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())


def test_conv_too_deep_for_the_pictures(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.uint8))
    result = invoke_train("--data", str(tmp_path / "x.npy"), "--arch", "conv", "--conv-widths", "4,4,4,4")
    assert "8x8 pictures are too small for 4 strided convolutions" in one_error_line(result)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\x00\x00\x08\x03" + b"\x00" * 7, "truncated header"), (b"garbage!" * 4, "not an IDX file")],
)
def test_bad_idx_file(tmp_path, content, expected):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(content))
    assert_one_error(invoke_train("--data-dir", str(tmp_path)), f"train-images-idx3-ubyte.gz: {expected}")


def test_bad_hidden_sizes():
    result = invoke_train("--hidden", "512,x")
    assert result.exit_code == 2
    assert "expected comma-separated layer widths" in result.output


# The published version is checked before any data is read or any step trained: a run that would
# end in "already exists" after minutes of training must end at once. `main` runs in-process with
# the loader and the trainer replaced by ones that fail the test if they are reached.
def refuse_work(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the version must be checked before any data is loaded or trained on")


@pytest.fixture
def repository(tmp_path, monkeypatch):
    from vae_serve.training import cli

    monkeypatch.setattr(cli, "_load", refuse_work)
    monkeypatch.setattr(cli, "train", refuse_work)
    (tmp_path / "fashion-vae" / "1").mkdir(parents=True)
    return tmp_path


def invoke_train(*args: str):
    from click.testing import CliRunner

    from vae_serve.training.cli import main

    return CliRunner().invoke(main, list(args))


def one_error_line(result) -> str:
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_existing_version_is_refused_before_training(repository):
    result = invoke_train("--model-repository", str(repository), "--version", "1")
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert str(repository / "fashion-vae" / "1") in line
    assert "already exists" in line


@pytest.mark.parametrize(
    "version",
    ["abc", "01", "00", "-1", "+1", "1.0", "1e3", " 1", "1 ", "", "²", "٣", "1" * 19, "../2", "2/3"],
)
def test_malformed_version_is_refused_before_training(repository, version):
    result = invoke_train("--model-repository", str(repository), "--version", version)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "Invalid value for '--version'" in line
    assert "ASCII digits" in line
    assert [p.name for p in (repository / "fashion-vae").iterdir()] == ["1"]


def test_existing_version_is_fine_without_export(repository):
    """--no-export publishes nothing, so an existing --version is no reason to refuse."""
    result = invoke_train("--model-repository", str(repository), "--version", "1", "--no-export")
    assert isinstance(result.exception, AssertionError)  # it went on to load the data


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([], "1"),
        (["1"], "2"),
        (["1", "7", "3"], "8"),
        # Entries the server skips do not count: not versions, so not in the way either.
        (["2", "²", "٣", "01", "099", "1x", ".9.tmp", "9" * 19], "3"),
        (["0"], "1"),
    ],
)
def test_next_version_counts_only_real_versions(tmp_path, entries, expected):
    from vae_serve.training.export import next_version

    for entry in entries:
        (tmp_path / "m" / entry).mkdir(parents=True)
    (tmp_path / "m").mkdir(exist_ok=True)
    assert next_version(tmp_path, "m") == expected


def test_default_version_is_the_next_one(repository, caplog):
    """Without --version the run is headed for the next version; its check passes, so work begins."""
    with caplog.at_level(logging.INFO, logger="vae_serve.training"):
        result = invoke_train("--model-repository", str(repository))
    assert isinstance(result.exception, AssertionError), result.output  # it went on to load the data
    assert f"will publish {repository / 'fashion-vae' / '2'}" in caplog.text


def test_version_rule_is_the_servers():
    from vae_serve.server.models.repository import _VERSION
    from vae_serve.training.export import VERSION_RULE

    assert VERSION_RULE.pattern == _VERSION.pattern


def test_no_version_fits_after_the_largest(repository):
    (repository / "fashion-vae" / ("9" * 18)).mkdir()
    result = invoke_train("--model-repository", str(repository))
    assert result.exit_code == 1, result.output
    assert "no version after" in one_error_line(result)


@pytest.mark.slow
def test_published_card_records_the_principal_directions(fashion_mnist_dir, tmp_path):
    """A whole run (tiny): the card carries the test set's principal directions, which the
    server's card schema accepts and the exported encoder reproduces."""
    import json

    from vae_serve.server.models.repository import Card
    from vae_serve.training.directions import card_with_directions

    args = ["--data", str(fashion_mnist_dir), "--model-repository", str(tmp_path), "--limit", "256"]
    args += ["--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--iwae-k", "0"]
    result = invoke_train(*args, "--checkpoint", str(tmp_path / "last.pt"))
    assert result.exit_code == 0, result.output
    version = tmp_path / "fashion-vae" / "1"
    card = json.loads((version / "model.json").read_text())
    directions = Card.model_validate(card).principal_directions
    assert len(directions.vectors) == 4 and len(directions.mean) == 4
    # the same directions from the ONNX encoder as from PyTorch, over the same 256 test images
    again = card_with_directions(version, fashion_mnist_dir, limit=256)["principal_directions"]
    assert np.allclose(np.abs(again["vectors"]), np.abs(directions.vectors), atol=1e-3)


# What a torchrun rank runs, with a teardown step of its own that says whether it ran.
AS_LAUNCHED = """
import atexit, sys
atexit.register(lambda: print("interpreter teardown ran", file=sys.stderr))
from vae_serve.training.cli import entry
sys.argv[0] = "vae-train"
entry()
"""


@pytest.mark.parametrize(("world_size", "teardown"), [("2", False), ("1", True)])
@pytest.mark.parametrize(
    ("args", "status", "shown"),
    [(["--help"], 0, "Usage: vae-train"), (["--epochs", "-1"], 2, "Invalid value for '--epochs'")],
)
def test_a_rank_ends_without_the_interpreters_teardown(tmp_path, world_size, teardown, args, status, shown):
    """Under torchrun the interpreter's teardown is where gloo's worker thread can abort a
    finished rank (see `entry`): a rank skips it, keeping its exit status and every line it
    wrote; a lone process ends as usual."""
    env = {"PATH": "/usr/bin:/bin", "WORLD_SIZE": world_size}
    cmd = [sys.executable, "-c", AS_LAUNCHED, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == status, done.stderr
    assert shown in done.stdout + done.stderr
    assert ("interpreter teardown ran" in done.stderr) is teardown
