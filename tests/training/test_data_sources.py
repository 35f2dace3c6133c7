"""`open_data`: every kind of --data, read as the trainer reads it, and every way it can be wrong
ending in one DatasetError that names the file."""

import gzip
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from support import idx_bytes

from vae_serve.training import data
from vae_serve.training.data import DatasetError, InMemoryRows, StreamRows, load_images, open_data


def everything(rows) -> np.ndarray:
    return torch.cat(list(rows.batches(7))).numpy()


def save_pictures(folder, count, size=(16, 16), mode="RGB", seed=0, suffixes=(".png", ".jpg", ".webp")):
    """`count` pictures of random blocks, saved losslessly as PNG (and JPEG, WebP when asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    for i in range(count):
        blocks = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
        pixels = blocks.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]
        Image.fromarray(pixels).convert(mode).save(folder / f"{i:03d}{suffixes[i % len(suffixes)]}")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels and holds almost none: a decompression bomb's
    header, which must be refused before anything is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --- IDX: as before ------------------------------------------------------------------------------


def test_idx_directory_is_read_whole_as_before(tmp_path):
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3) * 4
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images[:2]))
    splits = open_data(tmp_path, limit=4)
    assert isinstance(splits.train, InMemoryRows)  # the default model's recipe: one tensor, as always
    assert splits.image_shape == (4, 3, 1)
    assert (len(splits.train), len(splits.test)) == (4, 2)
    expected = load_images(tmp_path, "train")[:4].reshape(4, -1)
    assert torch.equal(splits.train.rows, torch.from_numpy(expected))
    assert splits.description == f"IDX files in {tmp_path}"


def test_a_limit_reads_only_the_first_images(tmp_path):
    """Fashion-MNIST is 70,000 images: a small run must not decompress them all. A file cut short
    after its first images shows it: read whole it is refused, limited it serves them."""
    images = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    for split in ("train", "t10k"):
        cut = idx_bytes(images)[: 16 + 3 * 4 * 3]  # the header and the first three images
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(cut))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz"):
        open_data(tmp_path)
    splits = open_data(tmp_path, limit=3)
    assert torch.equal(splits.train.rows, torch.from_numpy(images[:3].reshape(3, -1) / np.float32(255)))
    assert load_images(tmp_path, "t10k", 2).shape == (2, 4, 3)


def test_idx_can_be_resized_and_coloured(tmp_path):
    images = np.full((3, 4, 4), 255, np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    splits = open_data(tmp_path, image_size=(8, 6), channels=3)
    assert splits.image_shape == (8, 6, 3)
    np.testing.assert_allclose(everything(splits.train), 1.0)
    assert everything(splits.train).shape == (3, 8 * 6 * 3)


# --- Arrays -------------------------------------------------------------------------------------


def test_npy_is_memory_mapped_and_split_by_the_seed(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 6, 5), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    splits = open_data(tmp_path / "x.npy", test_fraction=0.2, seed=3)
    assert isinstance(splits.train, StreamRows)
    assert isinstance(splits.train.source.array, np.memmap)  # never loaded whole
    assert splits.image_shape == (6, 5, 1)
    assert (len(splits.train), len(splits.test)) == (40, 10)
    train, test = everything(splits.train), everything(splits.test)
    rows = images.reshape(50, -1).astype(np.float32) / 255
    # the two splits are the whole set, each image once, in file order
    together = np.concatenate([train, test])
    assert sorted(map(bytes, together.round(6))) == sorted(map(bytes, rows.round(6)))
    again = open_data(tmp_path / "x.npy", test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(everything(again.test), test)
    other = open_data(tmp_path / "x.npy", test_fraction=0.2, seed=4)
    assert not np.array_equal(everything(other.test), test)


def test_float_rgb_npy_converted_to_grey_and_resized(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.float32)
    images[..., 0] = 1.0  # pure red
    np.save(tmp_path / "x.npy", images)
    splits = open_data(tmp_path / "x.npy", channels=1, image_size=(4, 4))
    assert splits.image_shape == (4, 4, 1)
    np.testing.assert_allclose(everything(splits.train), 0.299, atol=1e-6)  # ITU-R 601 luma of red


def test_directory_of_train_and_test_npy(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros((6, 4, 4, 3), np.uint8))
    np.save(tmp_path / "test.npy", np.ones((2, 4, 4, 3), np.float32))
    splits = open_data(tmp_path, limit=5)
    assert (len(splits.train), len(splits.test), splits.channels) == (5, 2, 3)
    np.testing.assert_array_equal(everything(splits.test), 1.0)


def test_npz_with_train_and_test(tmp_path):
    np.savez_compressed(
        tmp_path / "d.npz", train=np.zeros((6, 4, 4), np.uint8), test=np.ones((3, 4, 4), np.uint8)
    )
    splits = open_data(tmp_path / "d.npz")
    assert (len(splits.train), len(splits.test)) == (6, 3)
    np.testing.assert_allclose(everything(splits.test), 1 / 255)


def test_npz_with_one_array_is_split(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((20, 4, 4), np.uint8))
    splits = open_data(tmp_path / "d.npz", test_fraction=0.25)
    assert (len(splits.train), len(splits.test)) == (15, 5)


def test_npz_member_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_NPZ_BYTES", 100)
    np.savez_compressed(tmp_path / "d.npz", images=np.zeros((20, 4, 4), np.uint8))
    with pytest.raises(
        DatasetError, match=r"d\.npz\[images\]: 320 bytes, above the 100 .* save the images as \.npy"
    ):
        open_data(tmp_path / "d.npz")


def test_npz_of_other_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(
        DatasetError, match=r"expected arrays 'train' and 'test', or a single array.*images, labels"
    ):
        open_data(tmp_path / "d.npz")


def bad_npy(tmp_path, array, **save):
    np.save(tmp_path / "x.npy", array, **save)
    return tmp_path / "x.npy"


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros((4, 3, 3), np.int64), r"images must be uint8, or float in \[0, 1\]; found dtype int64"),
        (
            np.zeros((4, 9), np.uint8),
            r"images must be \[N, H, W\] or \[N, H, W, C\] \(channel-last\); found shape \[4, 9\]",
        ),
        (np.zeros((4, 3, 3, 4), np.uint8), "4 channels on the last axis; expected 1 or 3"),
        (np.zeros((0, 3, 3), np.uint8), "holds no images"),
        (
            np.full((4, 3, 3), 255.0, np.float32),
            r"found values from 255 to 255; uint8 values stored as floats\? divide by 255",
        ),
        (np.full((4, 3, 3), -0.5, np.float64), r"found values from -0.5 to -0.5$"),
        (np.full((4, 3, 3), np.nan, np.float32), r"float images must lie in \[0, 1\], found NaN"),
        (np.zeros((1, 3, 3), np.uint8), r"too few images \(1\) to split into train and test; at least 2"),
    ],
)
def test_bad_array(tmp_path, array, expected):
    path = bad_npy(tmp_path, array)
    with pytest.raises(DatasetError, match=expected) as caught:
        open_data(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_fortran_ordered_npy_is_refused(tmp_path):
    path = bad_npy(tmp_path, np.asfortranarray(np.zeros((4, 3, 3), np.uint8)))
    with pytest.raises(DatasetError, match=r"Fortran-ordered.*np\.ascontiguousarray"):
        open_data(path)


def test_truncated_npy(tmp_path):
    path = bad_npy(tmp_path, np.zeros((4, 3, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match=r"truncated or padded \(31 data bytes"):
        open_data(path)


def test_object_arrays_are_never_unpickled(tmp_path):
    path = bad_npy(tmp_path, np.array([[[object()]]] * 2, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="object arrays are refused"):
        open_data(path)
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.write(path, "train.npy")
        archive.write(path, "test.npy")
    with pytest.raises(DatasetError, match=r"d\.npz\[train\]: object arrays are refused"):
        open_data(tmp_path / "d.npz")


def test_not_an_array(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DatasetError, match=r"x\.npy: not a readable \.npy array"):
        open_data(tmp_path / "x.npy")
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"x\.npz: not a readable \.npz archive"):
        open_data(tmp_path / "x.npz")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"x\.csv: not a directory, a \.npy or a \.npz file"):
        open_data(tmp_path / "x.csv")


def test_mixed_array_sizes_need_image_size(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros((2, 4, 4), np.uint8))
    np.save(tmp_path / "test.npy", np.zeros((2, 5, 4), np.uint8))
    with pytest.raises(
        DatasetError, match=r"test\.npy: images of 5x4, but .*train\.npy holds 4x4 \(HxW\); pass --image-size"
    ):
        open_data(tmp_path)
    assert open_data(tmp_path, image_size=(4, 4)).image_shape == (4, 4, 1)


# --- Pictures -----------------------------------------------------------------------------------


def test_picture_folder_split_by_the_seed(tmp_path):
    save_pictures(tmp_path / "pics", 20)
    splits = open_data(tmp_path / "pics", test_fraction=0.25, workers=0)
    assert splits.image_shape == (16, 16, 3)
    assert (len(splits.train), len(splits.test)) == (15, 5)
    train = everything(splits.train)
    assert train.shape == (15, 16 * 16 * 3) and train.dtype == np.float32
    assert train.min() >= 0 and train.max() <= 1
    # channel-last rows: the first PNG's first pixel is its first three values
    first = splits.train.source.paths[0]
    if first.suffix == ".png":
        np.testing.assert_allclose(train[0, :3], np.asarray(Image.open(first))[0, 0] / 255, atol=1e-6)


def test_train_and_test_folders_decoded_by_workers(tmp_path):
    grey = {"mode": "L", "suffixes": (".png", ".jpg")}  # WebP has no grey: Pillow reads it as RGB
    save_pictures(tmp_path / "train" / "cats", 6, **grey)
    save_pictures(tmp_path / "train" / "dogs", 4, seed=1, **grey)
    save_pictures(tmp_path / "test", 3, seed=2, **grey)
    (tmp_path / "train" / "notes.txt").write_text("not a picture: ignored")
    splits = open_data(tmp_path, workers=1)
    assert splits.image_shape == (16, 16, 1)  # all grey: one channel
    assert (len(splits.train), len(splits.test)) == (10, 3)
    rng_state = torch.get_rng_state()
    assert everything(splits.train).shape == (10, 256)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the training noise does not depend on the loader


def test_picture_modes_become_grey_or_rgb(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(folder / "a_deep.png")  # 16-bit grey
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(folder / "b_alpha.png")
    Image.new("P", (4, 4), 0).save(folder / "c_palette.png")
    Image.new("L", (4, 4), 255).save(folder / "d_grey.webp", lossless=True)
    grey = open_data(folder, channels=1, test_fraction=0.25, workers=0)
    rgb = open_data(folder, test_fraction=0.25, workers=0)
    assert rgb.channels == 3  # one picture in colour: all of them in colour
    rows = {
        p.name: r
        for p, r in zip(
            grey.train.source.paths + grey.test.source.paths,
            np.concatenate([everything(grey.train), everything(grey.test)]),
            strict=True,
        )
    }
    np.testing.assert_allclose(rows["a_deep.png"], 1.0)
    np.testing.assert_allclose(rows["b_alpha.png"], 76 / 255)  # Pillow's luma of red
    np.testing.assert_allclose(rows["d_grey.webp"], 1.0)
    assert everything(rgb.train).shape[1] == 4 * 4 * 3


def test_mixed_picture_sizes_need_image_size(tmp_path):
    save_pictures(tmp_path / "pics", 4)
    Image.new("RGB", (30, 20)).save(tmp_path / "pics" / "wide.png")
    with pytest.raises(
        DatasetError, match=r"wide\.png: 20x30 pixels, but .* is 16x16 \(HxW\); pass --image-size HxW"
    ):
        open_data(tmp_path / "pics")
    splits = open_data(tmp_path / "pics", image_size=(8, 12), workers=0)
    assert splits.image_shape == (8, 12, 3)
    assert everything(splits.train).shape[1] == 8 * 12 * 3


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({"train": 3, "test": 0}, r"test: the test split is empty"),
        ({"train": 3}, r"test: missing; train/ and test/ go together"),
        ({"": 1}, r"pics: too few images \(1\) to split into train and test"),
        ({}, r"pics: no IDX files, train\.npy/test\.npy or PNG, JPEG or WebP pictures here"),
    ],
)
def test_bad_picture_folders(tmp_path, layout, expected):
    (tmp_path / "pics").mkdir()
    for folder, count in layout.items():
        (tmp_path / "pics" / folder).mkdir(exist_ok=True)
        save_pictures(tmp_path / "pics" / folder, count)
    with pytest.raises(DatasetError, match=expected):
        open_data(tmp_path / "pics")


def test_unreadable_picture_is_named_before_training(tmp_path):
    save_pictures(tmp_path / "pics", 4)
    (tmp_path / "pics" / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DatasetError, match=r"broken\.png: not a readable picture \(not PNG, JPEG or WebP\)"):
        open_data(tmp_path / "pics")


def test_picture_corrupt_inside_is_named_when_decoded_in_a_worker(tmp_path):
    save_pictures(tmp_path / "pics", 4, suffixes=(".png",))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "pics" / "cut.png")
    whole = (tmp_path / "pics" / "cut.png").read_bytes()
    (tmp_path / "pics" / "cut.png").write_bytes(whole[: len(whole) // 2])  # the header survives
    splits = open_data(tmp_path / "pics", image_size=(16, 16), test_fraction=0.2, seed=0, workers=1)
    rows = splits.train if any(p.name == "cut.png" for p in splits.train.source.paths) else splits.test
    with pytest.raises(DatasetError) as caught:
        everything(rows)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'pics' / 'cut.png'}: not a readable picture")
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize(
    "side",
    [
        9000,  # 81 Mpx: above the cap, below Pillow's own error
        100_000,  # 10 Gpx: Pillow refuses it too
    ],
)
def test_decompression_bomb_refused_from_its_header(tmp_path, side):
    save_pictures(tmp_path / "pics", 3)
    (tmp_path / "pics" / "bomb.png").write_bytes(png_header(side, side))
    with pytest.raises(DatasetError, match=r"bomb\.png: picture .* refused before decoding"):
        open_data(tmp_path / "pics")
    assert Image.MAX_IMAGE_PIXELS == data.MAX_PICTURE_PIXELS


def test_missing_paths(tmp_path):
    with pytest.raises(DatasetError, match="data directory not found"):
        open_data(tmp_path / "absent")
    with pytest.raises(DatasetError, match=r"absent\.npy: file not found"):
        open_data(tmp_path / "absent.npy")
