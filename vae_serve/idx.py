"""IDX files (the original MNIST / Fashion-MNIST format), read with numpy alone.

Shared by the trainer (its data) and the client (images to encode). Every way a file can be wrong
ends in one `IdxError` whose message names the file, so a CLI can print one line, not a traceback.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IdxError", "read_idx"]

# IDX type codes (third header byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class IdxError(Exception):
    """An IDX file that cannot be used; the message names the file and says why."""


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IdxError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path}: corrupt gzip stream ({exc})") from None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array of the shape its header declares."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        magic = data[:4].hex() if data else "empty file"
        raise IdxError(
            f"{path}: not an IDX file (magic {magic}; expected 0000 followed by a type code "
            f"and a rank); use the original IDX files"
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise IdxError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    expected = header + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise IdxError(f"{path}: truncated or padded ({len(data)} bytes, header {shape} needs {expected})")
    return np.frombuffer(data, dtype, offset=header).reshape(shape)
