"""Reading input files into float32 rows: IDX files, PNG/JPEG images, or .npy arrays (the client
CLI's files, and the pictures people upload to the server).

Input files may be hostile (a gzip bomb, a lying header, a huge picture that compresses to a few
kilobytes): every size is checked against the caps below and the file's real size before the work
it would cost, and every failure is one `InputFileError` naming the file.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from tokenize import TokenError
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from vae_serve.idx import IdxError, open_regular_file, read_idx

from .grid import is_picture_shape

__all__ = [
    "MAX_INPUT_VALUES",
    "MAX_PICTURES",
    "MAX_PICTURE_PIXELS",
    "InputFileError",
    "load_array",
    "load_images",
    "read_picture",
]

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Only these decoders run, whatever a file's suffix claims (no EPS, which would start Ghostscript).
_PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")

MAX_INPUT_VALUES = 1 << 26  # values read from one IDX or .npy file: 256 MiB as float32 (Fashion-MNIST: 47M)
MAX_PICTURE_PIXELS = 4096 * 4096  # one picture's width x height, checked before it is decoded
MAX_PICTURES = 10_000  # pictures per command


class InputFileError(Exception):
    """An input file that cannot be used; the message names it."""


def _grey(img: Image.Image) -> Image.Image:
    """8-bit greyscale; 16-bit and float pictures are scaled, not clipped, to 0..255, without a
    float64 copy of the picture."""
    if img.mode.startswith("I;16"):
        deep = np.asarray(img)  # uint16, in the file's byte order
        return Image.fromarray((deep // 257).astype(np.uint8), mode="L")  # 65535 -> 255 exactly
    if img.mode in ("I", "F"):
        values = np.asarray(img).astype(np.float32)  # int32 or float32 as it is: 4 bytes a pixel
        np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
        values *= np.float32(255.0 / top)
        return Image.fromarray(np.clip(values, 0, 255, out=values).astype(np.uint8), mode="L")
    return img.convert("L")


def _rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; a deep greyscale picture is scaled as `_grey` scales it, then made colour."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return _grey(img).convert("RGB")
    return img.convert("RGB")


def _check_picture_shape(image_shape: tuple[int, ...]) -> None:
    if not is_picture_shape(image_shape):
        raise InputFileError(
            f"pictures need an image shape [H, W] or [H, W, 3]; the model's is {list(image_shape)}"
        )


def read_picture(
    source: Path | BinaryIO, image_shape: tuple[int, ...], label: str, max_pixels: int = MAX_PICTURE_PIXELS
) -> np.ndarray:
    """One picture (a file, or an upload's bytes) as a row of `image_shape` values in [0, 1]: grey
    for [H, W], channel-last RGB for [H, W, 3]; its size is read from the header and checked
    against `max_pixels` before it is decoded."""
    path = label
    _check_picture_shape(image_shape)
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: the check below refuses it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source, formats=_PICTURE_FORMATS)
        with img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise InputFileError(
                    f"{path}: picture of {width}x{height} pixels is above the limit of {max_pixels} pixels"
                )
            picture = _rgb(img) if len(image_shape) == 3 else _grey(img)
            height, width = image_shape[:2]
            if picture.size != (width, height):
                picture = picture.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(picture, dtype=np.float32).reshape(-1) / 255.0
    except UnidentifiedImageError:  # its message names the source object, e.g. <_io.BytesIO at 0x...>
        raise InputFileError(f"{path}: not a readable image (not {' or '.join(_PICTURE_FORMATS)})") from None
    except (
        OSError,
        ValueError,
        EOFError,
        SyntaxError,
        IndexError,
        TypeError,
        MemoryError,
        Image.DecompressionBombError,
    ) as exc:
        raise InputFileError(f"{path}: not a readable image ({exc})") from None


def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header, which is parsed without unpickling."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        return fmt.read_array_header_1_0(f)
    if version == (2, 0):
        return fmt.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def load_array(path: Path, limit: int | None = None, max_values: int = MAX_INPUT_VALUES) -> np.ndarray:
    """A .npy file as float32, without ever unpickling; only its first `limit` rows are read.

    The header is checked against the file's real size and `max_values` before any data is read.
    """
    try:
        f, size = open_regular_file(path)
        with f:
            shape, fortran, dtype = _npy_header(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError, SyntaxError, TokenError) as exc:  # numpy's parser raises them all
        raise InputFileError(f"{path}: not a readable .npy array ({exc or 'empty file'})") from None
    if dtype.hasobject:
        raise InputFileError(f"{path}: not a readable .npy array (object arrays would need pickle)")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputFileError(f"{path}: expected an array of numbers, found dtype {dtype}")
    if len(shape) < 2 or shape[0] == 0:
        raise InputFileError(
            f"{path}: expected a non-empty array of rows [N, ...], found shape {list(shape)}"
        )
    declared = dtype.itemsize * math.prod(shape)  # Python ints: a lying header cannot overflow
    if size - offset != declared:
        raise InputFileError(
            f"{path}: truncated or padded ({size - offset} data bytes, header {list(shape)} "
            f"{dtype} needs {declared})"
        )
    rows = shape[0] if limit is None else min(limit, shape[0])
    # A Fortran-ordered array's first rows are spread over the whole file: it counts in full.
    values = math.prod(shape) if fortran else rows * math.prod(shape[1:])
    if values > max_values:
        raise InputFileError(
            f"{path}: {list(shape)} is {values} values to read, above the limit of {max_values}"
            + ("" if limit is not None else "; pass fewer rows")
        )
    if declared == 0:
        raise InputFileError(f"{path}: holds no values (shape {list(shape)})")
    try:
        with path.open("rb") as f:  # read, not mapped: a file truncated meanwhile is an error, not SIGBUS
            f.seek(offset)
            data = np.fromfile(f, dtype=dtype, count=values)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: not a readable .npy array ({exc})") from None
    if len(data) != values:
        raise InputFileError(f"{path}: truncated while being read")
    if fortran:
        data = data.reshape(shape, order="F")[:rows]
    return np.ascontiguousarray(data.reshape(rows, *shape[1:]) if not fortran else data, dtype=np.float32)


def _idx(path: Path, input_dim: int, limit: int | None) -> np.ndarray:
    try:
        images = read_idx(path, limit=limit, max_bytes=MAX_INPUT_VALUES)  # uint8: a byte a value
    except IdxError as exc:
        raise InputFileError(str(exc)) from None
    if images.dtype != np.uint8 or images.ndim < 2 or int(np.prod(images.shape[1:])) != input_dim:
        raise InputFileError(
            f"{path}: expected uint8 images of {input_dim} pixels, found {images.dtype} {list(images.shape)}"
        )
    return images.reshape(len(images), input_dim).astype(np.float32) / 255.0


def load_images(paths: list[Path], image_shape: tuple[int, ...], limit: int | None = None) -> np.ndarray:
    """Rows [N, prod(image_shape)] in [0, 1]: one IDX or .npy file, or any number of pictures.
    `limit`: only the first `limit` images are read (and decoded, or decompressed)."""
    input_dim = int(np.prod(image_shape))
    if len(paths) > MAX_PICTURES:
        raise InputFileError(f"{len(paths)} input files, above the limit of {MAX_PICTURES} per command")
    for path in paths:
        if not path.is_file():
            raise InputFileError(f"{path}: no such file")
    rows = _rows(paths, image_shape, input_dim, limit)
    if len(rows) == 0:
        raise InputFileError(f"{paths[0]}: holds no images")
    return rows


def _rows(paths: list[Path], image_shape: tuple[int, ...], input_dim: int, limit: int | None) -> np.ndarray:
    if len(paths) == 1 and paths[0].suffix.lower() not in PICTURE_SUFFIXES:
        path = paths[0]
        if path.suffix == ".npy":
            rows = load_array(path, limit)
            if int(np.prod(rows.shape[1:])) != input_dim:
                raise InputFileError(
                    f"{path}: expected [N, {input_dim}] values, found shape {list(rows.shape)}"
                )
            return rows.reshape(len(rows), input_dim)
        return _idx(path, input_dim, limit)
    _check_picture_shape(image_shape)
    return np.stack([read_picture(p, image_shape, str(p)) for p in paths[:limit]])
