"""Training data: the image splits of a directory of IDX files (Fashion-MNIST by default).

Problems end in one `DatasetError` whose message names the directory or file and the fix, so
the trainer prints a single line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vae_serve.idx import IdxError, read_idx

__all__ = ["DEFAULT_DATA_DIR", "DatasetError", "load_images"]

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
_INSTALL_HINT = "install Debian's package (apt-get install dataset-fashion-mnist) or pass --data-dir"


class DatasetError(Exception):
    """A data directory or IDX file that cannot be used; the message says which and why."""


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
    try:
        images = read_idx(path)
    except IdxError as exc:
        raise DatasetError(f"{exc}; reinstall the data or pass --data-dir") from None
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected uint8 images of rank 3, found {images.dtype} of shape {images.shape}"
        )
    return images.astype(np.float32) / 255.0
