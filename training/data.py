"""Training data: the train and test images of a directory of IDX files (Fashion-MNIST by
default), of a `.npy` / `.npz` array, or of a folder of pictures (PNG, JPEG, WebP).

Every source ends as rows of D = H*W*C float32 values in [0, 1], channel-last (H, W, C)
flattened: the layout the exported graphs take. IDX files (small by nature) are read whole, as
they always were; a `.npy` file is memory-mapped and pictures are decoded a batch at a time,
by DataLoader workers, so a set larger than memory trains. `.npz` members cannot be mapped
(they may be compressed): each is read whole, and refused above `MAX_NPZ_BYTES`.

Input files may be hostile or just wrong. Everything that can be checked before training is:
array headers (dtype, rank, size) before any data is read, float ranges in one bounded pass,
every picture's header (format, size, pixel count) before any is decoded, and
`MAX_PICTURE_PIXELS` against decompression bombs. Each problem ends in one `DatasetError` whose
message names the file and the fix, so the trainer prints a single line instead of a traceback;
a picture that only fails when decoded mid-epoch reaches the trainer the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import IO, BinaryIO, TypedDict

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from vae_serve.idx import IdxError, open_regular_file, read_idx

__all__ = [
    "CHANNELS",
    "DEFAULT_DATA_DIR",
    "DEFAULT_TEST_FRACTION",
    "MAX_NPZ_BYTES",
    "MAX_PICTURE_PIXELS",
    "PICTURE_SUFFIXES",
    "DataOptions",
    "DataSplits",
    "DatasetError",
    "ImageRows",
    "InMemoryRows",
    "StreamRows",
    "as_rows",
    "load_images",
    "open_data",
]

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_TEST_FRACTION = 0.1
CHANNELS = (1, 3)
# One picture's width x height, checked from its header before it is decoded: a few-kilobyte PNG
# can declare billions of pixels. 64 Mpx (a 48 Mpx camera's pictures fit) is 192 MiB as RGB.
MAX_PICTURE_PIXELS = 8192 * 8192
# A .npz member is read into memory whole; above this, .npy files (memory-mapped) are the way.
MAX_NPZ_BYTES = 1 << 30
MAX_NPZ_MEMBERS = 64
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Only these decoders run, whatever a file's suffix claims.
_PICTURE_FORMATS = ("PNG", "JPEG", "WEBP")
_FORMAT_NAMES = "PNG, JPEG or WebP"
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_BILINEAR = Image.Resampling.BILINEAR  # as the server resizes uploaded pictures
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as Pillow converts RGB to L
_SCAN_VALUES = 1 << 24  # values per step of the float range check: 64 MiB as float32
_INSTALL_HINT = "install Debian's package (apt-get install dataset-fashion-mnist) or pass --data"
_PICTURE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, IndexError, TypeError, MemoryError)


class DatasetError(Exception):
    """Data that cannot be used; the message names the file or directory and why."""


# --- IDX files, read whole ----------------------------------------------------------------------


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DatasetError(f"{data_dir}: no {stem}[.gz] here; {_INSTALL_HINT}")


def load_images(data_dir: Path, split: str, limit: int | None = None) -> np.ndarray:
    """Images of a split ('train' or 't10k') as float32 in [0, 1], shape [N, H, W]; with `limit`,
    only the first ones are read (and decompressed)."""
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: data directory not found; {_INSTALL_HINT}")
    path = _find(data_dir, f"{split}-images-idx3-ubyte")
    try:
        images = read_idx(path, limit)
    except IdxError as exc:
        raise DatasetError(f"{exc}; reinstall the data or pass --data") from None
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{path}: expected uint8 images of rank 3, found {images.dtype} of shape {images.shape}"
        )
    return images.astype(np.float32) / 255.0


def _is_idx_dir(path: Path) -> bool:
    stems = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    return any((path / f"{stem}{gz}").exists() for stem in stems for gz in ("", ".gz"))


# --- Rows: what training and evaluation iterate -------------------------------------------------


class ImageRows:
    """N images as float32 rows [D] in [0, 1], handed out in batches on `device`."""

    device: torch.device

    def __len__(self) -> int:
        raise NotImplementedError

    def head(self, count: int) -> ImageRows:
        """The first `count` rows (all of them if fewer)."""
        raise NotImplementedError

    def to(self, device: torch.device) -> ImageRows:
        raise NotImplementedError

    def batches(self, batch_size: int, order: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Batches [B, D] of the rows in `order` (default: all, in turn), `batch_size` at a time."""
        raise NotImplementedError


class InMemoryRows(ImageRows):
    """Rows held in one tensor (IDX data, or any tensor a caller passes)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows
        self.device = rows.device

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, count: int) -> InMemoryRows:
        return InMemoryRows(self.rows[:count])

    def to(self, device: torch.device) -> InMemoryRows:
        return InMemoryRows(self.rows.to(device))

    def batches(self, batch_size: int, order: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        if order is None:
            for start in range(0, len(self.rows), batch_size):
                yield self.rows[start : start + batch_size]
            return
        for idx in torch.tensor(list(order)).split(batch_size):
            yield self.rows[idx]


def as_rows(images: torch.Tensor | ImageRows) -> ImageRows:
    return InMemoryRows(images) if isinstance(images, torch.Tensor) else images


@dataclass(frozen=True)
class _Failure:
    """A batch that could not be read, carried out of a worker as a value: an exception raised
    there would reach the trainer wrapped in the worker's traceback."""

    message: str


class _RowsDataset(Dataset):
    def __init__(self, source: _Source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, position: int) -> torch.Tensor | _Failure:
        return self.__getitems__([position])

    def __getitems__(self, positions: list[int]) -> torch.Tensor | _Failure:  # a whole batch at once
        try:
            return torch.from_numpy(self.source.rows(positions))
        except DatasetError as exc:
            return _Failure(str(exc))


def _whole_batch(batch: torch.Tensor | _Failure) -> torch.Tensor | _Failure:
    return batch  # __getitems__ made the batch already


class _Plan:
    """The batches of the current pass; a persistent DataLoader reads it anew each pass."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamRows(ImageRows):
    """Rows read on demand from a memory-mapped array or decoded from pictures, by `workers`
    DataLoader processes (0: in this one)."""

    def __init__(self, source: _Source, workers: int, device: torch.device | None = None) -> None:
        self.source = source
        self.workers = workers
        self.device = device or torch.device("cpu")
        self._plan = _Plan()
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        return len(self.source)

    def head(self, count: int) -> StreamRows:
        return StreamRows(self.source.head(count), self.workers, self.device)

    def to(self, device: torch.device) -> StreamRows:
        return StreamRows(self.source, self.workers, device)

    def batches(self, batch_size: int, order: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        plan = list(range(len(self))) if order is None else list(order)
        self._plan.batches = [plan[start : start + batch_size] for start in range(0, len(plan), batch_size)]
        if self._loader is None:
            self._loader = DataLoader(
                _RowsDataset(self.source),
                batch_sampler=self._plan,
                num_workers=self.workers,
                # torch types it as taking a list of items; after __getitems__ it takes the batch.
                collate_fn=_whole_batch,  # type: ignore[arg-type]
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,  # started once, not every epoch
                generator=torch.Generator(),  # its seed draw must not move the global RNG
            )
        for batch in self._loader:
            if isinstance(batch, _Failure):
                raise DatasetError(batch.message)
            yield batch.to(self.device, non_blocking=True)


# --- Converting arrays and pictures to rows -----------------------------------------------------


def _resize(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w, C] float32 -> [H, W, C], bilinear per channel (as the server resizes uploads)."""
    height, width = size
    planes = [
        Image.fromarray(np.ascontiguousarray(picture[..., c])).resize((width, height), _BILINEAR)
        for c in range(picture.shape[-1])
    ]
    return np.stack([np.asarray(plane) for plane in planes], axis=-1)


def _convert(block: np.ndarray, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """Images [n, h, w(, c)], uint8 or float in [0, 1] -> float32 rows [n, H*W*channels]."""
    rows = block.astype(np.float32)
    if block.dtype == np.uint8:
        rows /= 255.0
    if rows.ndim == 3:
        rows = rows[..., None]
    if channels == 1 and rows.shape[-1] == 3:
        rows = (rows @ _LUMA)[..., None]
    elif channels == 3 and rows.shape[-1] == 1:
        rows = np.repeat(rows, 3, axis=-1)
    if size is not None and rows.shape[1:3] != size:
        rows = np.stack([_resize(picture, size) for picture in rows])
    np.clip(rows, 0.0, 1.0, out=rows)  # float rounding of the luma weights and resampling
    return rows.reshape(len(rows), -1)


class _Source:
    def __len__(self) -> int:
        raise NotImplementedError

    def head(self, count: int) -> _Source:
        raise NotImplementedError

    def rows(self, positions: list[int]) -> np.ndarray:
        raise NotImplementedError


@dataclass
class _ArraySource(_Source):
    """Some rows (`index`, a split) of an array [N, h, w(, c)]: a memory map or, from .npz, in memory."""

    path: Path
    array: np.ndarray
    index: np.ndarray
    size: tuple[int, int] | None
    channels: int

    def __len__(self) -> int:
        return len(self.index)

    def head(self, count: int) -> _ArraySource:
        return dataclasses.replace(self, index=self.index[:count])

    def rows(self, positions: list[int]) -> np.ndarray:
        return _convert(np.asarray(self.array[self.index[positions]]), self.size, self.channels)

    def __getstate__(self) -> dict:
        # A worker started by spawn or forkserver maps the file itself rather than receiving a copy.
        state = dict(self.__dict__)
        if isinstance(self.array, np.memmap):
            state["array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.array is None:
            self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)


def _grey(img: Image.Image) -> Image.Image:
    """8-bit greyscale; 16-bit and float pictures are scaled, not clipped, to 0..255."""
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img) // 257).astype(np.uint8))  # 65535 -> 255 exactly
    if img.mode in ("I", "F"):
        values = np.asarray(img).astype(np.float32)
        np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
        values *= np.float32(255.0 / top)
        return Image.fromarray(np.clip(values, 0, 255, out=values).astype(np.uint8))
    return img.convert("L")


def _open_picture(f: BinaryIO, path: Path) -> Image.Image:
    """The picture's header, read lazily (nothing decoded), its pixel count checked."""
    Image.MAX_IMAGE_PIXELS = MAX_PICTURE_PIXELS  # Pillow's own check, a second line of defence
    with warnings.catch_warnings():  # Pillow warns between 1x and 2x its cap; the check below refuses
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(f, formats=_PICTURE_FORMATS)
        except Image.DecompressionBombError:
            raise DatasetError(
                f"{path}: picture of more than {MAX_PICTURE_PIXELS} pixels refused before decoding "
                "(a decompression bomb, or too large to train on)"
            ) from None
    width, height = img.size
    if width * height > MAX_PICTURE_PIXELS:
        img.close()
        raise DatasetError(
            f"{path}: picture of {height}x{width} (HxW) pixels is above the limit of "
            f"{MAX_PICTURE_PIXELS} pixels; refused before decoding"
        )
    return img


def _picture_error(path: Path, exc: BaseException) -> DatasetError:
    if isinstance(exc, UnidentifiedImageError):  # its message names the file object
        return DatasetError(f"{path}: not a readable picture (not {_FORMAT_NAMES})")
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return DatasetError(f"{path}: not a readable picture ({reason})")


def _decode(path: Path, listed: tuple[int, int], size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """One picture as a float32 row [H*W*channels] in [0, 1]."""
    try:
        f, _ = open_regular_file(path)
        with f, _open_picture(f, path) as img:
            if img.size != listed:
                raise DatasetError(f"{path}: changed since training began ({img.size} was {listed} pixels)")
            height, width = size or (img.height, img.width)
            if img.format == "JPEG":  # decode at the smallest scale still >= the target: big photos
                img.draft("L" if channels == 1 else "RGB", (width, height))
            if channels == 1:
                picture = _grey(img)
            else:
                picture = _grey(img) if img.mode.startswith("I") or img.mode == "F" else img
                picture = picture.convert("RGB")
            if picture.size != (width, height):
                picture = picture.resize((width, height), _BILINEAR)
            return np.asarray(picture, dtype=np.float32).reshape(-1) / 255.0
    except DatasetError:
        raise
    except (*_PICTURE_ERRORS, Image.DecompressionBombError) as exc:
        raise _picture_error(path, exc) from None


@dataclass
class _PictureSource(_Source):
    paths: list[Path]
    sizes: list[tuple[int, int]]  # (width, height) of each from its header, as Pillow gives it
    size: tuple[int, int] | None
    channels: int

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, count: int) -> _PictureSource:
        return dataclasses.replace(self, paths=self.paths[:count], sizes=self.sizes[:count])

    def rows(self, positions: list[int]) -> np.ndarray:
        return np.stack([_decode(self.paths[p], self.sizes[p], self.size, self.channels) for p in positions])


# --- Opening a data source ----------------------------------------------------------------------


@dataclass
class DataSplits:
    train: ImageRows
    test: ImageRows
    image_shape: tuple[int, int, int]  # (H, W, C) of every row
    description: str  # what the card's "dataset" says

    @property
    def channels(self) -> int:
        return self.image_shape[2]


class DataOptions(TypedDict, total=False):
    """`open_data`'s keyword arguments, gathered by a caller that passes them on."""

    image_size: tuple[int, int] | None
    channels: int | None
    test_fraction: float
    seed: int
    limit: int | None
    workers: int | None


class _Shape(TypedDict):
    """What every source's rows are converted to."""

    size: tuple[int, int] | None
    channels: int | None


class _Split(TypedDict):
    """How a source without a test split of its own is split."""

    fraction: float
    seed: int


def _split(count: int, fraction: float, seed: int, where: object) -> tuple[np.ndarray, np.ndarray]:
    """Train and test positions of `count` items: a seeded shuffle, each split in file order."""
    if count < 2:
        raise DatasetError(f"{where}: too few images ({count}) to split into train and test; at least 2")
    tests = min(count - 1, max(1, round(count * fraction)))
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[tests:]), np.sort(order[:tests])


def _split_note(fraction: float, seed: int) -> str:
    return f"{fraction:g} of it held out for test (--test-fraction, seed {seed})"


def _check_shape(where: object, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype != np.uint8 and dtype.kind != "f":
        raise DatasetError(f"{where}: images must be uint8, or float in [0, 1]; found dtype {dtype}")
    if len(shape) not in (3, 4):
        raise DatasetError(
            f"{where}: images must be [N, H, W] or [N, H, W, C] (channel-last); found shape {list(shape)}"
        )
    if len(shape) == 4 and shape[3] not in CHANNELS:
        raise DatasetError(
            f"{where}: {shape[3]} channels on the last axis; expected 1 or 3 (channel-last [N, H, W, C])"
        )
    if shape[0] == 0:
        raise DatasetError(f"{where}: holds no images (shape {list(shape)})")
    if min(shape[1:3]) == 0:
        raise DatasetError(f"{where}: images of no pixels (shape {list(shape)})")


def _check_values(where: object, array: np.ndarray) -> None:
    """Float images must lie in [0, 1] (NaN does not): one pass, a bounded block at a time."""
    if array.dtype == np.uint8:
        return
    step = max(1, _SCAN_VALUES // max(1, math.prod(array.shape[1:])))
    for start in range(0, len(array), step):
        block = np.asarray(array[start : start + step])
        low, high = block.min(), block.max()
        if not (low >= 0 and high <= 1):
            hint = "; uint8 values stored as floats? divide by 255" if high > 1 else ""
            found = "NaN" if np.isnan(low) or np.isnan(high) else f"values from {low:.4g} to {high:.4g}"
            raise DatasetError(f"{where}: float images must lie in [0, 1], found {found}{hint}")


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header, parsed without unpickling."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _open_npy(path: Path) -> np.ndarray:
    """The array memory-mapped, its header and size checked before the map is made."""
    try:
        f, size = open_regular_file(path)
        with f:
            shape, fortran, dtype = _npy_header(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError, SyntaxError, TokenError) as exc:
        raise DatasetError(f"{path}: not a readable .npy array ({exc or 'empty file'})") from None
    if dtype.hasobject:
        raise DatasetError(f"{path}: object arrays are refused (they would need pickle)")
    _check_shape(path, shape, dtype)
    if fortran:
        raise DatasetError(
            f"{path}: Fortran-ordered, so every image is spread over the whole file; "
            "save np.ascontiguousarray(images) instead"
        )
    declared = dtype.itemsize * math.prod(shape)
    if size - offset != declared:
        raise DatasetError(
            f"{path}: truncated or padded ({size - offset} data bytes, header {list(shape)} {dtype} "
            f"needs {declared})"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npy array ({exc})") from None


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    """'train' and 'test', or the one array there, read into memory: each header is checked
    against MAX_NPZ_BYTES before its member is decompressed."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        members = [name for name in archive.namelist() if name.endswith(".npy")]
        if len(archive.namelist()) > MAX_NPZ_MEMBERS:
            raise DatasetError(f"{path}: more than {MAX_NPZ_MEMBERS} members; expected train and test")
        names = {member.removesuffix(".npy"): member for member in members}
        if "train" in names and "test" in names:
            chosen = {"train": names["train"], "test": names["test"]}
        elif len(names) == 1:
            chosen = names
        else:
            shown = ", ".join(sorted(names)[:8]) or "none"
            raise DatasetError(
                f"{path}: expected arrays 'train' and 'test', or a single array to split; found {shown}"
            )
        arrays = {}
        for key, member in chosen.items():
            where = f"{path}[{key}]"
            try:
                with archive.open(member) as f:
                    shape, _, dtype = _npy_header(f)
                if dtype.hasobject:
                    raise DatasetError(f"{where}: object arrays are refused (they would need pickle)")
                _check_shape(where, shape, dtype)
                if dtype.itemsize * math.prod(shape) > MAX_NPZ_BYTES:
                    raise DatasetError(
                        f"{where}: {dtype.itemsize * math.prod(shape)} bytes, above the {MAX_NPZ_BYTES} "
                        "a .npz member may hold (it is read into memory whole); save the images "
                        "as .npy files (np.save), which are memory-mapped at any size"
                    )
                with archive.open(member) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            except DatasetError:
                raise
            except (OSError, ValueError, EOFError, SyntaxError, TokenError, zipfile.BadZipFile) as exc:
                raise DatasetError(f"{where}: not a readable array ({exc or 'empty'})") from None
        return arrays


def _shape_of(arrays: list[tuple[object, np.ndarray]], size: tuple[int, int] | None) -> tuple[int, int]:
    """The (H, W) of the first array's images, which the others share, or `size`; mixed sizes
    need --image-size."""
    first, reference = arrays[0]
    for where, array in arrays[1:]:
        if size is None and array.shape[1:3] != reference.shape[1:3]:
            (h, w), (rh, rw) = array.shape[1:3], reference.shape[1:3]
            raise DatasetError(
                f"{where}: images of {h}x{w}, but {first} holds {rh}x{rw} (HxW); "
                "pass --image-size HxW to resize them all"
            )
    return size or reference.shape[1:3]


def _channels_of(array: np.ndarray) -> int:
    return array.shape[3] if array.ndim == 4 else 1


def _array_splits(
    train: tuple[Path, np.ndarray],
    test: tuple[Path, np.ndarray] | None,
    *,
    size: tuple[int, int] | None,
    channels: int | None,
    fraction: float,
    seed: int,
    workers: int,
    description: str,
) -> DataSplits:
    for where, array in (train, test) if test else (train,):
        _check_values(where, array)
    height, width = _shape_of([train, test] if test else [train], size)
    channels = channels or _channels_of(train[1])
    if test is None:
        train_index, test_index = _split(len(train[1]), fraction, seed, train[0])
        test = train
    else:
        train_index, test_index = np.arange(len(train[1])), np.arange(len(test[1]))

    def rows(part: tuple[Path, np.ndarray], index: np.ndarray) -> StreamRows:
        return StreamRows(_ArraySource(part[0], part[1], index, size, channels), workers)

    return DataSplits(
        rows(train, train_index), rows(test, test_index), (height, width, channels), description
    )


def _idx_splits(
    path: Path, size: tuple[int, int] | None, channels: int | None, limit: int | None
) -> DataSplits:
    train, test = (load_images(path, split, limit) for split in ("train", "t10k"))
    description = f"{'Fashion-MNIST ' if path == DEFAULT_DATA_DIR else ''}IDX files in {path}"
    _shape_of([(path / "train-images", train), (path / "t10k-images", test)], size)
    height, width = size or train.shape[1:3]
    channels = channels or 1
    if channels == 1 and all(images.shape[1:3] == (height, width) for images in (train, test)):
        rows = [torch.from_numpy(images.reshape(len(images), -1)) for images in (train, test)]
    else:  # IDX sets are small: converted once, in memory, a bounded block at a time
        step = 4096
        rows = [
            torch.from_numpy(
                np.concatenate(
                    [_convert(images[s : s + step], size, channels) for s in range(0, len(images), step)]
                )
            )
            for images in (train, test)
        ]
    return DataSplits(InMemoryRows(rows[0]), InMemoryRows(rows[1]), (height, width, channels), description)


def _list_pictures(folder: Path) -> list[Path]:
    """Pictures below `folder` by suffix, in a stable order; hidden entries left out."""
    found = []
    for root, dirs, files in os.walk(folder):  # links to folders are not followed: no cycles
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(root) / name
            for name in sorted(files)
            if not name.startswith(".") and name.lower().endswith(PICTURE_SUFFIXES)
        ]
    return found


def _scan(paths: list[Path]) -> tuple[list[tuple[int, int]], bool]:
    """Every picture's (width, height) from its header, nothing decoded; and whether any is in
    colour (then 3 channels by default)."""
    sizes, colour = [], False
    for path in paths:
        try:
            f, _ = open_regular_file(path)
            with f, _open_picture(f, path) as img:
                sizes.append(img.size)
                colour = colour or img.mode in _COLOUR_MODES
        except DatasetError:
            raise
        except _PICTURE_ERRORS as exc:
            raise _picture_error(path, exc) from None
    return sizes, colour


def _picture_splits(
    path: Path,
    *,
    size: tuple[int, int] | None,
    channels: int | None,
    fraction: float,
    seed: int,
    workers: int,
) -> DataSplits:
    if (path / "train").is_dir() or (path / "test").is_dir():
        folders = {split: path / split for split in ("train", "test")}
        listed = {}
        for split, folder in folders.items():
            if not folder.is_dir():
                raise DatasetError(f"{folder}: missing; train/ and test/ go together")
            listed[split] = _list_pictures(folder)
            if not listed[split]:
                raise DatasetError(f"{folder}: the {split} split is empty (no {_FORMAT_NAMES} pictures)")
        description = f"pictures in {path} (train/ and test/)"
    else:
        every = _list_pictures(path)
        if not every:
            raise DatasetError(
                f"{path}: no IDX files, train.npy/test.npy or {_FORMAT_NAMES} pictures here; {_INSTALL_HINT}"
            )
        train_index, test_index = _split(len(every), fraction, seed, path)
        listed = {"train": [every[i] for i in train_index], "test": [every[i] for i in test_index]}
        description = f"pictures in {path}, {_split_note(fraction, seed)}"
    scanned = {split: _scan(paths) for split, paths in listed.items()}
    if size is None:
        first_path, (width, height) = listed["train"][0], scanned["train"][0][0]
        for split, (sizes, _) in scanned.items():
            for picture, found in zip(listed[split], sizes, strict=True):
                if found != (width, height):
                    raise DatasetError(
                        f"{picture}: {found[1]}x{found[0]} pixels, but {first_path} is {height}x{width} "
                        "(HxW); pass --image-size HxW to resize them all"
                    )
        size_out = (height, width)
    else:
        size_out = size
    channels = channels or (3 if any(colour for _, colour in scanned.values()) else 1)

    def rows(split: str) -> StreamRows:
        return StreamRows(_PictureSource(listed[split], scanned[split][0], size, channels), workers)

    return DataSplits(rows("train"), rows("test"), (*size_out, channels), description)


def open_data(
    path: Path,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    limit: int | None = None,
    workers: int | None = None,
) -> DataSplits:
    """The train and test rows of `path`:

    - a directory of IDX files (train-/t10k-images-idx3-ubyte[.gz]), read whole (with `limit`,
      only the images kept are read);
    - a `.npy` file (split by `test_fraction`), or a directory with `train.npy` and `test.npy`,
      memory-mapped;
    - a `.npz` file with arrays `train` and `test`, or one array (split by `test_fraction`);
    - a directory of pictures, with `train/` and `test/` folders or split by `test_fraction`.

    Arrays are [N, H, W] or [N, H, W, C], uint8 or float in [0, 1]. `image_size` (H, W) resizes
    every image, `channels` (1 or 3) converts; by default they are the data's own (pictures:
    3 channels if any is in colour). `limit` keeps the first rows of each split. `workers`:
    DataLoader processes that read the rows (default: 0 for arrays, up to 4 for pictures).
    """
    if channels is not None and channels not in CHANNELS:
        raise DatasetError(f"--channels {channels}: expected 1 or 3")
    if not path.exists():
        if path.suffix.lower() in (".npy", ".npz"):
            raise DatasetError(f"{path}: file not found")
        raise DatasetError(f"{path}: data directory not found; {_INSTALL_HINT}")
    options: _Shape = {"size": image_size, "channels": channels}
    split: _Split = {"fraction": test_fraction, "seed": seed}
    array_workers = 0 if workers is None else workers
    if path.is_dir() and _is_idx_dir(path):
        data = _idx_splits(path, **options, limit=limit)
    elif path.is_dir() and ((path / "train.npy").exists() or (path / "test.npy").exists()):
        parts = {name: path / f"{name}.npy" for name in ("train", "test")}
        for part in parts.values():
            if not part.exists():
                raise DatasetError(f"{part}: missing; a directory of .npy files needs train.npy and test.npy")
        train, test = ((part, _open_npy(part)) for part in parts.values())
        data = _array_splits(
            train, test, **options, **split, workers=array_workers, description=f".npy arrays in {path}"
        )
    elif path.is_dir():
        picture_workers = min(4, os.cpu_count() or 1) if workers is None else workers
        data = _picture_splits(path, **options, **split, workers=picture_workers)
    elif path.suffix.lower() == ".npy":
        description = f"{path}, {_split_note(test_fraction, seed)}"
        data = _array_splits(
            (path, _open_npy(path)), None, **options, **split, workers=array_workers, description=description
        )
    elif path.suffix.lower() == ".npz":
        arrays = _open_npz(path)
        named = [(Path(f"{path}[{key}]"), array) for key, array in arrays.items()]
        if len(named) == 2:
            test_part, description = named[1], f"{path} (arrays train and test)"
        else:
            test_part, description = None, f"{path}, {_split_note(test_fraction, seed)}"
        data = _array_splits(
            named[0], test_part, **options, **split, workers=array_workers, description=description
        )
    else:
        raise DatasetError(f"{path}: not a directory, a .npy or a .npz file")
    if image_size is not None:
        data.description += f", resized to {image_size[0]}x{image_size[1]}"
    if limit is not None:
        data.train, data.test = data.train.head(limit), data.test.head(limit)
    return data
