"""Pictures for people: a batch of images as one PNG grid. Pure functions, no server needed."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["grid_shape", "image_grid", "is_picture_shape", "png_bytes", "save_png"]


def is_picture_shape(image_shape: tuple[int, ...]) -> bool:
    """Whether images of this shape can be drawn: grey [H, W] or channel-last RGB [H, W, 3]."""
    return len(image_shape) == 2 or (len(image_shape) == 3 and image_shape[2] == 3)


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    """(rows, columns) for `count` tiles: as square as possible unless columns is given."""
    if count < 1:
        raise ValueError("a grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def image_grid(
    images: np.ndarray, columns: int | None = None, padding: int = 2, scale: int = 2, fill: float = 0.5
) -> np.ndarray:
    """images [N, H, W] or [N, H, W, 3] in [0, 1] -> one uint8 [rows*(H*scale+p)+p, cols*(W*scale+p)+p]
    picture, with the images' channel axis (if any) last.

    Tiles are separated by `padding` pixels of grey `fill`, so dark images stay distinguishable;
    one image alone has no frame, so that it can be sent back as a picture of its own.
    """
    if not (images.ndim >= 3 and is_picture_shape(images.shape[1:])):
        raise ValueError(f"expected images [N, H, W] or [N, H, W, 3], got shape {list(images.shape)}")
    if len(images) == 1:
        padding = 0
    channels = images.shape[3:]  # () for grey, (3,) for RGB: the same arithmetic on every channel
    scaling = np.ones((1, scale, scale) + (1,) * len(channels), dtype=images.dtype)
    tiles = np.kron(np.clip(images, 0, 1), scaling)
    n, h, w = tiles.shape[:3]
    rows, cols = grid_shape(n, columns)
    canvas = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, *channels), fill, dtype=np.float32
    )
    for i, tile in enumerate(tiles):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        canvas[top : top + h, left : left + w] = tile
    return np.round(canvas * 255).astype(np.uint8)


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 picture, greyscale [H, W] or RGB [H, W, 3], as PNG: byte for byte what `save_png` writes."""
    out = io.BytesIO()
    Image.fromarray(picture, mode="L" if picture.ndim == 2 else "RGB").save(out, format="PNG")
    return out.getvalue()


def save_png(picture: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(picture))
