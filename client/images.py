"""Reading the CLI's input files into float32 rows: IDX files, PNG/JPEG images, or .npy arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vae_serve.idx import IdxError, read_idx

__all__ = ["InputFileError", "load_array", "load_images"]

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class InputFileError(Exception):
    """An input file that cannot be used; the message names it."""


def _grey(img: Image.Image) -> Image.Image:
    """8-bit greyscale; 16-bit and float pictures are scaled, not clipped, to 0..255."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    return img.convert("L")


def _picture(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            grey = _grey(img)
            height, width = image_shape
            if grey.size != (width, height):
                grey = grey.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(grey, dtype=np.float32).reshape(-1) / 255.0
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InputFileError(f"{path}: not a readable image ({exc})") from None


def load_array(path: Path) -> np.ndarray:
    """A .npy file as float32, without ever unpickling."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputFileError(f"{path}: not a readable .npy array ({exc or 'empty file'})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise InputFileError(f"{path}: expected an array of numbers")
    if array.ndim < 2 or len(array) == 0:
        raise InputFileError(
            f"{path}: expected a non-empty array of rows [N, ...], found shape {list(array.shape)}"
        )
    return array.astype(np.float32)


def _idx(path: Path, input_dim: int) -> np.ndarray:
    try:
        images = read_idx(path)
    except IdxError as exc:
        raise InputFileError(str(exc)) from None
    if images.dtype != np.uint8 or images.ndim < 2 or int(np.prod(images.shape[1:])) != input_dim:
        raise InputFileError(
            f"{path}: expected uint8 images of {input_dim} pixels, found {images.dtype} {list(images.shape)}"
        )
    return images.reshape(len(images), input_dim).astype(np.float32) / 255.0


def load_images(paths: list[Path], image_shape: tuple[int, ...]) -> np.ndarray:
    """Rows [N, prod(image_shape)] in [0, 1]: one IDX or .npy file, or any number of pictures."""
    input_dim = int(np.prod(image_shape))
    for path in paths:
        if not path.is_file():
            raise InputFileError(f"{path}: no such file")
    rows = _rows(paths, image_shape, input_dim)
    if len(rows) == 0:
        raise InputFileError(f"{paths[0]}: holds no images")
    return rows


def _rows(paths: list[Path], image_shape: tuple[int, ...], input_dim: int) -> np.ndarray:
    if len(paths) == 1 and paths[0].suffix.lower() not in PICTURE_SUFFIXES:
        path = paths[0]
        if path.suffix == ".npy":
            rows = load_array(path)
            if int(np.prod(rows.shape[1:])) != input_dim:
                raise InputFileError(
                    f"{path}: expected [N, {input_dim}] values, found shape {list(rows.shape)}"
                )
            return rows.reshape(len(rows), input_dim)
        return _idx(path, input_dim)
    if len(image_shape) != 2:
        raise InputFileError(f"pictures need a 2-D image shape; the model's is {list(image_shape)}")
    return np.stack([_picture(p, image_shape) for p in paths])
