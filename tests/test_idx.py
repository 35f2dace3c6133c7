"""The IDX reader shared by the trainer and the client."""

import gzip
import struct

import numpy as np
import pytest
from support import idx_bytes

from vae_serve.idx import IdxError, read_idx


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) * 4


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips(tmp_path, images, compress):
    raw = idx_bytes(images)
    path = tmp_path / ("f.gz" if compress else "f")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "labels"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), [1, -2, 70000])


def test_truncated_header(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(IdxError, match="truncated header"):
        read_idx(path)


@pytest.mark.parametrize("head", [b"\x1f\x8b\x08\x00", b"PK\x03\x04", b"\x00\x00\x42\x03", b""])
def test_wrong_magic(tmp_path, head):
    path = tmp_path / "f"
    path.write_bytes(head + b"\x00" * 16)
    with pytest.raises(IdxError, match=rf"{path}: not an IDX file"):
        read_idx(path)
