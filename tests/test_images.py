"""The CLI's input files: IDX, .npy and pictures, and a one-line error for each bad one."""

import gzip
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import idx_bytes

from vae_serve.images import MAX_PICTURE_PIXELS, MAX_PICTURES, InputFileError, load_array, load_images

SHAPE = (28, 28)


def test_idx_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(images)))
    rows = load_images([tmp_path / "x.gz"], SHAPE)
    assert rows.shape == (5, 784) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, images.reshape(5, 784) / 255.0, rtol=1e-6)


def test_pictures_are_greyscaled_and_resized(tmp_path):
    Image.new("RGB", (56, 56), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("L", (28, 28), 0).save(tmp_path / "black.png")
    rows = load_images([tmp_path / "white.png", tmp_path / "black.png"], SHAPE)
    assert rows.shape == (2, 784)
    assert rows[0].min() == 1.0 and rows[1].max() == 0.0


def test_npy_rows(tmp_path):
    np.save(tmp_path / "x.npy", np.full((3, 28, 28), 0.25))
    rows = load_images([tmp_path / "x.npy"], SHAPE)
    assert rows.shape == (3, 784) and rows.dtype == np.float32


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.png", b"not a png", "not a readable image"),
        ("x.idx", b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "truncated or padded"),
        ("x.idx", b"junk", "not an IDX file"),
        ("x.npy", b"junk", "not a readable .npy array"),
    ],
)
def test_bad_files_name_themselves(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputFileError, match=message) as caught:
        load_images([tmp_path / name], SHAPE)
    assert name in str(caught.value)


def test_wrong_sizes_and_missing_files(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 10)))
    with pytest.raises(InputFileError, match=r"expected \[N, 784\] values, found shape \[3, 10\]"):
        load_images([tmp_path / "x.npy"], SHAPE)
    (tmp_path / "x.idx").write_bytes(idx_bytes(np.zeros((2, 5, 5), np.uint8)))
    with pytest.raises(InputFileError, match="expected uint8 images of 784 pixels"):
        load_images([tmp_path / "x.idx"], SHAPE)
    with pytest.raises(InputFileError, match="no such file"):
        load_images([tmp_path / "absent.png"], SHAPE)


def test_npy_is_never_unpickled(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match=r"not a readable \.npy array"):
        load_array(tmp_path / "objects.npy")


def test_sixteen_bit_and_rgba_pictures_keep_their_scale(tmp_path):
    deep = np.zeros((28, 28), dtype=np.uint16)
    deep[:, :14] = 65535
    deep[:, 14:] = 32768
    Image.fromarray(deep).save(tmp_path / "deep.png")  # uint16: mode I;16
    Image.new("RGBA", (28, 28), (255, 255, 255, 128)).save(tmp_path / "alpha.png")
    rows = load_images([tmp_path / "deep.png", tmp_path / "alpha.png"], SHAPE).reshape(2, 28, 28)
    assert rows[0, :, :14].min() == 1.0
    assert abs(rows[0, :, 14:].mean() - 0.5) < 0.01  # half intensity stays half, not clipped to white
    assert rows[1].min() == 1.0


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("empty.npy", lambda p: p.write_bytes(b""), "not a readable .npy array"),
        ("scalar.npy", lambda p: np.save(p, np.float32(1)), "expected a non-empty array of rows"),
        ("none.npy", lambda p: np.save(p, np.zeros((0, 784))), "expected a non-empty array of rows"),
        ("none.idx", lambda p: p.write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8))), "holds no images"),
    ],
)
def test_empty_inputs_are_refused(tmp_path, name, write, message):
    write(tmp_path / name)
    with pytest.raises(InputFileError, match=message):
        load_images([tmp_path / name], SHAPE)


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        load_images([tmp_path], SHAPE)


def _peak(fn) -> tuple[object, int]:
    """fn()'s result or InputFileError, and the most memory numpy and Python held meanwhile."""
    tracemalloc.start()
    try:
        try:
            return fn(), tracemalloc.get_traced_memory()[1]
        except InputFileError as exc:
            return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


HUGE = [((4097, 4096), 16, 0), ((6000, 3000), 8, 0), ((16, 2**20 + 1), 8, 2), ((5000, 5000), 8, 6)]


@pytest.mark.parametrize(("size", "bit_depth", "colour"), HUGE)
def test_huge_pictures_are_refused_before_decoding(tmp_path, write_png, size, bit_depth, colour):
    write_png(tmp_path / "big.png", *size, bit_depth, colour)
    outcome, peak = _peak(lambda: load_images([tmp_path / "big.png"], SHAPE))
    assert isinstance(outcome, InputFileError)
    assert str(outcome) == (
        f"{tmp_path / 'big.png'}: picture of {size[0]}x{size[1]} pixels is above the limit of "
        f"{MAX_PICTURE_PIXELS} pixels"
    )
    assert peak < 1 << 20


def test_the_largest_sixteen_bit_picture_is_scaled_without_a_float64_copy(tmp_path, write_png):
    write_png(tmp_path / "deep.png", 4096, 2048, bit_depth=16)
    rows, peak = _peak(lambda: load_images([tmp_path / "deep.png"], SHAPE))
    assert rows.shape == (1, 784) and rows.max() == 0.0
    assert peak < 6 * 4096 * 2048  # bytes a pixel; a float64 copy alone is 8


def test_float_pictures_keep_their_scale_and_lose_their_nans(tmp_path):
    values = np.full((28, 28), 0.5, np.float32) * 255
    values[0, 0] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "f.tiff")
    rows = load_images([tmp_path / "f.tiff"], SHAPE).reshape(28, 28)
    assert rows[0, 0] == 0.0 and abs(rows[1:].mean() - 0.5) < 0.01


def test_picture_count_is_bounded_before_any_is_opened(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(MAX_PICTURES + 1)]
    with pytest.raises(
        InputFileError, match=rf"^{MAX_PICTURES + 1} input files, above the limit of {MAX_PICTURES}"
    ):
        load_images(paths, SHAPE)


def test_only_picture_formats_are_decoded_whatever_the_suffix(tmp_path):
    Image.new("L", (28, 28), 255).save(tmp_path / "x.ppm")
    (tmp_path / "x.png").write_bytes((tmp_path / "x.ppm").read_bytes())  # a PPM named .png
    with pytest.raises(InputFileError, match="not a readable image"):
        load_images([tmp_path / "x.png"], SHAPE)


def test_limit_decodes_only_the_first_pictures(tmp_path):
    Image.new("L", (28, 28), 255).save(tmp_path / "white.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG junk")
    rows = load_images([tmp_path / "white.png", tmp_path / "broken.png"], SHAPE, limit=1)
    assert rows.shape == (1, 784)


def test_idx_limit_decompresses_only_the_first_images(tmp_path):
    with gzip.open(tmp_path / "bomb.gz", "wb") as f:  # 100000 images: 78 MB of zeros, 76 KB on disk
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 100_000, 28, 28))
        for _ in range(100):
            f.write(bytes(784_000))
    rows, peak = _peak(lambda: load_images([tmp_path / "bomb.gz"], SHAPE, limit=3))
    assert rows.shape == (3, 784)
    assert peak < 4 << 20
    refused, peak = _peak(lambda: load_images([tmp_path / "bomb.gz"], SHAPE))
    assert isinstance(refused, InputFileError) and peak < 1 << 20
    assert "declares 78400000 bytes to read, above the limit of 67108864" in str(refused)


@pytest.mark.parametrize(
    ("shape", "descr", "data", "message"),
    [
        (
            "(1000000000000, 784)",
            "<f4",
            bytes(4096),
            "truncated or padded (4096 data bytes, header [1000000000000, "
            "784] float32 needs 3136000000000000)",
        ),
        ("(65536, 65536, 65536, 65536)", "<f4", b"", "truncated or padded (0 data bytes"),
        ("(2, 784)", "<f4", bytes(4 * 784 * 2 + 4), "truncated or padded"),
        ("(2, 784)", "<c8", bytes(8 * 784 * 2), "expected an array of numbers, found dtype complex64"),
        ("(2, 784)", "|O", bytes(8 * 784 * 2), "object arrays would need pickle"),
        ("(3, 0)", "<f4", b"", "holds no values"),
    ],
)
def test_lying_npy_headers_are_refused_before_reading(tmp_path, write_npy, shape, descr, data, message):
    path = tmp_path / "x.npy"
    write_npy(path, f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}", data)
    outcome, peak = _peak(lambda: load_array(path))
    assert isinstance(outcome, InputFileError)
    assert str(outcome).startswith(f"{path}: ") and message in str(outcome)
    assert peak < 1 << 20


def test_npy_reads_only_the_rows_it_is_limited_to(tmp_path):
    values = np.arange(100 * 784, dtype=np.float64).reshape(100, 784)
    np.save(tmp_path / "x.npy", values)
    np.testing.assert_array_equal(load_array(tmp_path / "x.npy", limit=2, max_values=2 * 784), values[:2])
    with pytest.raises(
        InputFileError, match=r"\[100, 784\] is 78400 values to read, above the limit of 1568; "
    ):
        load_array(tmp_path / "x.npy", max_values=2 * 784)
    np.save(tmp_path / "f.npy", np.asfortranarray(values))
    np.testing.assert_array_equal(load_array(tmp_path / "f.npy", limit=3), values[:3])
    np.testing.assert_array_equal(load_images([tmp_path / "f.npy"], SHAPE, limit=3), values[:3])


_DIMS = st.sampled_from([0, 1, 2, 784, 2**31, 2**63 - 1, 2**64]) | st.integers(0, 2**40)


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from([1, 2, 3]),
    descr=st.sampled_from(["<f4", "<f8", "|u1", ">i2", "<c8", "|O", "|V4", "<U3", "bogus", "<M8"]),
    fortran=st.sampled_from(["False", "True", "1"]),
    dims=st.lists(_DIMS, max_size=4),
    extra=st.integers(0, 64),
    cut=st.none() | st.integers(0, 200),
    wide=st.booleans(),
)
@example(version=1, descr="<f8", fortran="1", dims=[2], extra=0, cut=None, wide=True)  # TokenError
def test_any_npy_header_gives_rows_or_one_input_file_error(version, descr, fortran, dims, extra, cut, wide):
    """Any version, dtype, order or shape, a size field of the wrong width, cut anywhere."""
    shape = ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "")
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': ({shape}), }}"
    text = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    size = struct.pack("<H" if (version == 1) != wide else "<I", len(text))
    data = b"\x93NUMPY" + bytes([version, 0]) + size + text.encode() + bytes(extra)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        path.write_bytes(data[:cut])
        try:
            outcome: np.ndarray | str = load_array(path, limit=1)
        except InputFileError as exc:
            outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome.startswith(f"{path}: ") and "\n" not in outcome
    else:
        assert outcome.dtype == np.float32 and len(outcome) == 1


RGB = (8, 6, 3)


def test_colour_models_read_pictures_as_channel_last_rgb(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    Image.new("RGB", (12, 16), (255, 0, 128)).save(tmp_path / "big.png")  # twice the size: resized
    Image.new("L", (6, 8), 51).save(tmp_path / "grey.png")
    rows = load_images([tmp_path / "exact.png", tmp_path / "big.png", tmp_path / "grey.png"], RGB)
    assert rows.shape == (3, 144) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0], pixels.reshape(-1) / np.float32(255))
    assert (rows[1].reshape(RGB) == np.array([1.0, 0.0, 128 / 255], np.float32)).all()
    assert (rows[2] == np.float32(0.2)).all()  # grey becomes equal channels


def test_deep_grey_pictures_keep_their_scale_in_colour(tmp_path):
    deep = np.full((8, 6), 32768, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # mode I;16
    rows = load_images([tmp_path / "deep.png"], RGB)
    assert abs(rows.mean() - 0.5) < 0.01  # half intensity stays half, not clipped to white


@pytest.mark.parametrize("shape", [(48,), (8, 6, 4), (2, 4, 6, 1)])
def test_shapes_without_a_picture_form_are_refused_in_one_line(tmp_path, shape):
    Image.new("RGB", (6, 8)).save(tmp_path / "x.png")
    with pytest.raises(InputFileError, match=r"pictures need an image shape \[H, W\] or \[H, W, 3\]"):
        load_images([tmp_path / "x.png"], shape)
