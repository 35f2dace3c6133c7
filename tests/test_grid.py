import numpy as np
import pytest
from PIL import Image

from vae_serve.grid import grid_shape, image_grid, save_png


@pytest.mark.parametrize(
    ("count", "columns", "shape"),
    [(1, None, (1, 1)), (64, None, (8, 8)), (10, None, (3, 4)), (10, 5, (2, 5)), (3, 10, (1, 10))],
)
def test_grid_shape(count, columns, shape):
    assert grid_shape(count, columns) == shape


def test_grid_places_each_tile_scaled_with_grey_padding():
    images = np.zeros((3, 2, 3), dtype=np.float32)
    images[1] = 1.0
    picture = image_grid(images, columns=2, padding=1, scale=2)
    # 2 rows x 2 columns of 4x6 tiles with 1-pixel padding.
    assert picture.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1)
    assert picture.dtype == np.uint8
    assert (picture[1:5, 1:7] == 0).all()  # first tile black
    assert (picture[1:5, 8:14] == 255).all()  # second tile white
    assert picture[0, 0] == 128  # padding grey
    assert (picture[6:10, 8:14] == 128).all()  # the missing fourth tile stays grey


def test_grid_rejects_flat_rows():
    with pytest.raises(ValueError, match=r"expected images \[N, H, W\]"):
        image_grid(np.zeros((4, 784), dtype=np.float32))


def test_save_png_round_trips(tmp_path):
    picture = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    save_png(picture, tmp_path / "sub" / "g.png")
    with Image.open(tmp_path / "sub" / "g.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), picture)


def test_one_image_alone_has_no_frame_so_it_can_be_sent_back_as_a_picture():
    image = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    grid = image_grid(image)
    assert grid.shape == (56, 56)
    assert np.array_equal(grid[::2, ::2], np.round(image[0] * 255).astype(np.uint8))


def test_rgb_images_make_an_rgb_grid_with_grey_padding():
    images = np.zeros((3, 2, 3, 3), dtype=np.float32)
    images[0, ..., 0] = 1.0  # red
    images[1, ..., 2] = 1.0  # blue
    picture = image_grid(images, columns=2, padding=1, scale=2)
    assert picture.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 3) and picture.dtype == np.uint8
    assert (picture[1:5, 1:7] == [255, 0, 0]).all()
    assert (picture[1:5, 8:14] == [0, 0, 255]).all()
    assert (picture[6:10, 1:7] == 0).all()  # third tile black
    assert (picture[0, 0] == 128).all() and (picture[6:10, 8:14] == 128).all()


def test_each_colour_channel_is_drawn_as_a_grey_grid_would_be():
    grey = np.random.default_rng(1).random((5, 4, 3), dtype=np.float32) * 1.2 - 0.1  # some out of [0, 1]
    colour = image_grid(np.repeat(grey[..., None], 3, axis=-1), columns=3)
    for channel in range(3):
        assert np.array_equal(colour[..., channel], image_grid(grey, columns=3))


@pytest.mark.parametrize("shape", [(2, 4, 4, 4), (2, 4, 4, 1), (2, 16), (2, 2, 2, 3, 1)])
def test_grid_rejects_shapes_that_are_not_pictures(shape):
    with pytest.raises(ValueError, match=r"expected images \[N, H, W\] or \[N, H, W, 3\]"):
        image_grid(np.zeros(shape, dtype=np.float32))


def test_save_png_writes_an_rgb_picture_for_three_channels(tmp_path):
    picture = (np.arange(36, dtype=np.uint8) * 7).reshape(3, 4, 3)
    save_png(picture, tmp_path / "rgb.png")
    with Image.open(tmp_path / "rgb.png") as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), picture)
