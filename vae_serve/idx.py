"""IDX files (the original MNIST / Fashion-MNIST format), read with numpy alone.

Shared by the trainer (its data) and the client (images to encode). Every way a file can be wrong
ends in one `IdxError` whose message names the file, so a CLI can print one line, not a traceback.

Hostile files are expected: the header is parsed first and checked before any payload is read.
An uncompressed file must be exactly as long as its header says (checked against its size on
disk); a gzipped one is decompressed in bounded chunks and never past what the header declares,
so a gzip bomb costs at most `max_bytes` (or the first `limit` records) of memory, not its
decompressed size.
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["DEFAULT_MAX_BYTES", "IdxError", "open_regular_file", "read_idx"]

# IDX type codes (third header byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

DEFAULT_MAX_BYTES = 2 << 30  # payload read by default: 2 GiB (Fashion-MNIST's train split is 47 MB)
_CHUNK = 1 << 20  # bytes decompressed or read per step


class IdxError(Exception):
    """An IDX file that cannot be used; the message names the file and says why."""


def open_regular_file(path: Path) -> tuple[BinaryIO, int]:
    """`path` opened for reading, and its size; only a regular file is accepted: a FIFO would
    block the reader forever and a device never ends. Errors are `OSError`s naming the reason."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _open(path: Path) -> tuple[BinaryIO, int]:
    try:
        return open_regular_file(path)
    except OSError as exc:
        raise IdxError(f"{path}: cannot read ({exc.strerror})") from None


def _read(stream: BinaryIO | gzip.GzipFile, path: Path, size: int) -> bytearray:
    """Up to `size` bytes, decompressed and copied in bounded chunks (fewer only at end of file)."""
    out = bytearray()
    try:
        while len(out) < size:
            chunk = stream.read(min(_CHUNK, size - len(out)))
            if not chunk:
                break
            out += chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path}: corrupt gzip stream ({exc})") from None
    return out


def read_idx(path: Path, limit: int | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array of the shape its header declares.

    `limit`: keep only the first `limit` records (along the first axis); only their bytes are read
    or decompressed. `max_bytes`: refuse a file whose payload to read is larger (None: no cap).
    """
    raw, disk_size = _open(path)
    with raw:
        if path.suffix != ".gz":
            return _parse(raw, path, disk_size, False, limit, max_bytes)
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            return _parse(stream, path, disk_size, True, limit, max_bytes)


def _parse(
    stream: BinaryIO | gzip.GzipFile,
    path: Path,
    disk_size: int,
    compressed: bool,
    limit: int | None,
    max_bytes: int | None,
) -> np.ndarray:
    magic = _read(stream, path, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        shown = magic.hex() if magic else "empty file"
        raise IdxError(
            f"{path}: not an IDX file (magic {shown}; expected 0000 followed by a type code "
            f"and a rank); use the original IDX files"
        )
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    rank = magic[3]
    header = 4 + 4 * rank
    dims = _read(stream, path, 4 * rank)
    if len(dims) < 4 * rank:
        raise IdxError(f"{path}: truncated header ({4 + len(dims)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(bytes(dims), ">u4", count=rank))
    declared = header + dtype.itemsize * math.prod(shape)  # Python ints: no overflow
    if dtype.itemsize * math.prod(d for d in shape if d) >= 2**63:  # numpy's limit, even with a 0 in it
        raise IdxError(f"{path}: header shape {shape} is too large for any array")
    if not compressed and disk_size != declared:
        raise IdxError(f"{path}: truncated or padded ({disk_size} bytes, header {shape} needs {declared})")
    records = shape[0] if rank else 1
    kept = records if limit is None else min(max(limit, 0), records)
    kept_shape = (kept, *shape[1:]) if rank else shape
    need = dtype.itemsize * math.prod(kept_shape)
    if max_bytes is not None and need > max_bytes:
        raise IdxError(
            f"{path}: header {shape} declares {need} bytes to read, above the limit of {max_bytes}"
            + ("" if limit is not None else "; use a smaller file or fewer records")
        )
    payload = _read(stream, path, need)
    if len(payload) < need:
        raise IdxError(f"{path}: truncated ({header + len(payload)} bytes, header {shape} needs {declared})")
    if compressed and kept == records and _read(stream, path, 1):
        raise IdxError(f"{path}: padded (more data than header {shape} declares, {declared} bytes)")
    return np.frombuffer(payload, dtype).reshape(kept_shape)
