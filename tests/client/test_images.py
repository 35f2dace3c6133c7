"""The CLI's input files: IDX, .npy and pictures, and a one-line error for each bad one."""

import gzip

import numpy as np
import pytest
from PIL import Image
from support import idx_bytes

from vae_serve.client.images import InputFileError, load_array, load_images

SHAPE = (28, 28)


def test_idx_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(images)))
    rows = load_images([tmp_path / "x.gz"], SHAPE)
    assert rows.shape == (5, 784) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, images.reshape(5, 784) / 255.0, rtol=1e-6)


def test_pictures_are_greyscaled_and_resized(tmp_path):
    Image.new("RGB", (56, 56), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("L", (28, 28), 0).save(tmp_path / "black.png")
    rows = load_images([tmp_path / "white.png", tmp_path / "black.png"], SHAPE)
    assert rows.shape == (2, 784)
    assert rows[0].min() == 1.0 and rows[1].max() == 0.0


def test_npy_rows(tmp_path):
    np.save(tmp_path / "x.npy", np.full((3, 28, 28), 0.25))
    rows = load_images([tmp_path / "x.npy"], SHAPE)
    assert rows.shape == (3, 784) and rows.dtype == np.float32


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.png", b"not a png", "not a readable image"),
        ("x.idx", b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "truncated or padded"),
        ("x.idx", b"junk", "not an IDX file"),
        ("x.npy", b"junk", "not a readable .npy array"),
    ],
)
def test_bad_files_name_themselves(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputFileError, match=message) as caught:
        load_images([tmp_path / name], SHAPE)
    assert name in str(caught.value)


def test_wrong_sizes_and_missing_files(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 10)))
    with pytest.raises(InputFileError, match=r"expected \[N, 784\] values, found shape \[3, 10\]"):
        load_images([tmp_path / "x.npy"], SHAPE)
    (tmp_path / "x.idx").write_bytes(idx_bytes(np.zeros((2, 5, 5), np.uint8)))
    with pytest.raises(InputFileError, match="expected uint8 images of 784 pixels"):
        load_images([tmp_path / "x.idx"], SHAPE)
    with pytest.raises(InputFileError, match="no such file"):
        load_images([tmp_path / "absent.png"], SHAPE)


def test_npy_is_never_unpickled(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match=r"not a readable \.npy array"):
        load_array(tmp_path / "objects.npy")


def test_sixteen_bit_and_rgba_pictures_keep_their_scale(tmp_path):
    deep = np.zeros((28, 28), dtype=np.uint16)
    deep[:, :14] = 65535
    deep[:, 14:] = 32768
    Image.fromarray(deep).save(tmp_path / "deep.png")  # uint16: mode I;16
    Image.new("RGBA", (28, 28), (255, 255, 255, 128)).save(tmp_path / "alpha.png")
    rows = load_images([tmp_path / "deep.png", tmp_path / "alpha.png"], SHAPE).reshape(2, 28, 28)
    assert rows[0, :, :14].min() == 1.0
    assert abs(rows[0, :, 14:].mean() - 0.5) < 0.01  # half intensity stays half, not clipped to white
    assert rows[1].min() == 1.0


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("empty.npy", lambda p: p.write_bytes(b""), "not a readable .npy array"),
        ("scalar.npy", lambda p: np.save(p, np.float32(1)), "expected a non-empty array of rows"),
        ("none.npy", lambda p: np.save(p, np.zeros((0, 784))), "expected a non-empty array of rows"),
        ("none.idx", lambda p: p.write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8))), "holds no images"),
    ],
)
def test_empty_inputs_are_refused(tmp_path, name, write, message):
    write(tmp_path / name)
    with pytest.raises(InputFileError, match=message):
        load_images([tmp_path / name], SHAPE)


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        load_images([tmp_path], SHAPE)
