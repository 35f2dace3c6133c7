"""IDX files (the original MNIST / Fashion-MNIST format), read without any framework.

Every way a file can be wrong ends in one `DatasetError` whose message names the file and the
fix, so the trainer can print a single line instead of a traceback.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_DATA_DIR", "DatasetError", "load_images", "read_idx"]

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
_INSTALL_HINT = "install Debian's package (apt-get install dataset-fashion-mnist) or pass --data-dir"

# IDX type codes (third header byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class DatasetError(Exception):
    """A data directory or IDX file that cannot be used; the message says which and why."""


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt gzip stream ({exc}); re-download or reinstall it") from None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array of the shape its header declares."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        magic = data[:4].hex() if data else "empty file"
        raise DatasetError(
            f"{path}: not an IDX file (magic {magic}; expected 0000 followed by a type code "
            f"and a rank); point --data-dir at the original IDX files"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise DatasetError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    expected = header + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DatasetError(
            f"{path}: truncated or padded ({len(data)} bytes, header {shape} needs {expected}); "
            f"re-download or reinstall it"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DatasetError(f"{data_dir}: no {stem}[.gz] here; {_INSTALL_HINT}")


def load_images(data_dir: Path, split: str) -> np.ndarray:
    """Images of a split ('train' or 't10k') as float32 in [0, 1], shape [N, H, W]."""
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: data directory not found; {_INSTALL_HINT}")
    path = _find(data_dir, f"{split}-images-idx3-ubyte")
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected uint8 images of rank 3, found {images.dtype} of shape {images.shape}"
        )
    return images.astype(np.float32) / 255.0
