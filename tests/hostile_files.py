"""Small files that describe huge or impossible contents, as an attacker would write them."""

import struct
import zlib
from pathlib import Path


def png_file(path: Path, width: int, height: int, bit_depth: int = 8, colour: int = 0) -> None:
    """A valid all-black PNG of any size, written row by row: a few KB on disk for millions of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {0: 1, 2: 3, 6: 4}[colour]
    squeeze = zlib.compressobj(9)
    row = bytes(1 + width * channels * bit_depth // 8)
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def npy_file(path: Path, header: str, data: bytes) -> None:
    """A .npy file with any header, true or not."""
    text = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + data)
