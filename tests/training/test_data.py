import gzip
import struct

import numpy as np
import pytest
from support import idx_bytes

from vae_serve.training.data import DatasetError, load_images


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) * 4


def test_load_images_scales_to_unit_interval(tmp_path, images):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    loaded = load_images(tmp_path, "train")
    assert loaded.shape == (3, 4, 5)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, images / 255.0, rtol=1e-6)


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(DatasetError, match=r"data directory not found; install .*dataset-fashion-mnist"):
        load_images(tmp_path / "nope", "train")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"no t10k-images-idx3-ubyte\[\.gz\] here"):
        load_images(tmp_path, "t10k")


def test_truncated_file(tmp_path, images):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:-7])
    with pytest.raises(
        DatasetError, match=rf"{path}: truncated or padded \(69 bytes, header \(3, 4, 5\) needs 76\)"
    ):
        load_images(tmp_path, "train")


def test_corrupt_gzip(tmp_path, images):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:20])
    with pytest.raises(DatasetError, match="corrupt gzip stream"):
        load_images(tmp_path, "train")


def test_labels_file_is_not_images(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, 2) + b"\x01\x02")
    with pytest.raises(DatasetError, match="expected uint8 images of rank 3"):
        load_images(tmp_path, "train")
