"""Pictures in colour, end to end: a real server on a tiny RGB model ([8, 8, 3], channel-last),
PNGs out of sample, decode and reconstruct, RGB uploads in, and `vae-client`'s picture commands
over gRPC writing the same grids."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from support import GOOD_DECODER, GOOD_ENCODER, start_vae_serve_http, wait_for, write_version_files

from vae_serve.grid import image_grid, png_bytes

SHAPE = (8, 8, 3)
D, L = 8 * 8 * 3, 4
CLI = [sys.executable, "-m", "vae_serve.client.cli"]

# Weights that tell the channels apart: a picture read or drawn in the wrong order changes the
# encoder's means and the decoder's colours.
_rng = np.random.default_rng(0)
W_MEAN = (_rng.standard_normal((D, L)) * 0.1).astype(np.float32)
W_DECODE = _rng.standard_normal((L, D)).astype(np.float32)
B_DECODE = _rng.standard_normal(D).astype(np.float32)


def _graph(
    path: Path, input_name: str, width: int, nodes: list, outputs: dict[str, int], inits: list
) -> None:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", w]) for name, w in outputs.items()],
        [numpy_helper.from_array(value, name) for name, value in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def colour_repository(root: Path) -> Path:
    """root/rgb/1: mean = x @ W_MEAN, logvar = 0; x = sigmoid(z @ W_DECODE + B_DECODE)."""
    version = root / "rgb" / "1"
    version.mkdir(parents=True)
    _graph(
        version / "encoder.onnx",
        "x",
        D,
        [
            helper.make_node("MatMul", ["x", "W_mean"], ["mean"]),
            helper.make_node("MatMul", ["x", "W_logvar"], ["logvar"]),
        ],
        {"mean": L, "logvar": L},
        [("W_mean", W_MEAN), ("W_logvar", np.zeros((D, L), np.float32))],
    )
    _graph(
        version / "decoder.onnx",
        "z",
        L,
        [
            helper.make_node("MatMul", ["z", "W"], ["zw"]),
            helper.make_node("Add", ["zw", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["x"]),
        ],
        {"x": D},
        [("W", W_DECODE), ("b", B_DECODE)],
    )
    files = {
        name: {"sha256": hashlib.sha256((version / name).read_bytes()).hexdigest()}
        for name in ("encoder.onnx", "decoder.onnx")
    }
    card = {"input_dim": D, "latent_dim": L, "image_shape": list(SHAPE), "files": files}
    (version / "model.json").write_text(json.dumps(card))
    return root


@dataclass(frozen=True)
class ColourServer:
    url: str  # http://127.0.0.1:PORT
    grpc_target: str


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColourServer]:
    """Replaces conftest's default-model server for this module: conftest's `http` client, which
    needs only `url`, then talks to the colour model."""
    root = colour_repository(tmp_path_factory.mktemp("models"))
    proc, grpc_port, http_port = start_vae_serve_http("--model-repository", str(root), "--model", "rgb")
    try:
        yield ColourServer(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    finally:
        proc.terminate()
        proc.wait(30)


def vae_client(server: ColourServer, *args: str) -> None:
    done = subprocess.run(
        [*CLI, "--target", server.grpc_target, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def rgb(data: bytes | Path) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def rgb_picture(seed: int) -> tuple[np.ndarray, bytes]:
    """A random 8x8 RGB picture: its pixels [8, 8, 3] and its PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return pixels, out.getvalue()


def tile(grid: np.ndarray, row: int, column: int) -> np.ndarray:
    """The picture at (row, column) of a grid of 8x8 images scaled by 2 with 2 pixels of padding."""
    top, left = 2 + row * 18, 2 + column * 18
    return grid[top : top + 16 : 2, left : left + 16 : 2]


def test_the_model_is_served_in_colour(http):
    assert http.get("/v1/model").json()["image_shape"] == list(SHAPE)


def test_one_seed_gives_one_rgb_grid_from_rest_curl_and_vae_client(http, http_server, tmp_path):
    png = http.get("/v1/sample", params={"n": 4, "seed": 11}, headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert rgb(png.content).shape == (2 * 18 + 2, 2 * 18 + 2, 3)
    rows = np.array(http.get("/v1/sample", params={"n": 4, "seed": 11}).json()["x"], np.float32)
    assert png.content == png_bytes(image_grid(rows.reshape(-1, *SHAPE)))

    curled = tmp_path / "curl.png"
    subprocess.run(
        [
            "curl",
            "-sf",
            "-o",
            str(curled),
            "-H",
            "Accept: image/png",
            f"{http_server.url}/v1/sample?n=4&seed=11",
        ],
        check=True,
        timeout=30,
    )
    vae_client(http_server, "sample", "-n", "4", "--seed", "11", "-o", str(tmp_path / "client.png"))
    assert curled.read_bytes() == png.content == (tmp_path / "client.png").read_bytes()


def test_decode_draws_its_rows_in_colour(http):
    z = np.random.default_rng(1).standard_normal((3, L)).astype(np.float32)
    png = http.post("/v1/decode", json={"z": z.tolist()}, headers={"Accept": "image/png"})
    assert png.status_code == 200, png.text
    grid = rgb(png.content)
    assert grid.shape == (2 * 18 + 2, 2 * 18 + 2, 3)
    expected = 1 / (1 + np.exp(-(z @ W_DECODE + B_DECODE)))
    for i in range(3):
        drawn = tile(grid, i // 2, i % 2).astype(int)
        assert np.abs(drawn - np.round(expected[i].reshape(SHAPE) * 255)).max() <= 1


def test_an_rgb_upload_reconstructs_in_json_and_png(http):
    pixels, png = rgb_picture(2)
    row = pixels.reshape(-1).astype(np.float32) / 255  # channel-last, as the graphs read it
    reply = http.post("/v1/reconstruct", content=png, headers={"Content-Type": "image/png"})
    assert reply.status_code == 200, reply.text
    rebuilt = reply.json()
    np.testing.assert_allclose(np.array(rebuilt["mean"]), row[None] @ W_MEAN, atol=1e-5)
    picture = http.post(
        "/v1/reconstruct", content=png, headers={"Content-Type": "image/png", "Accept": "image/png"}
    )
    assert picture.status_code == 200, picture.text
    grid = rgb(picture.content)
    assert grid.shape == (18 + 2, 2 * 18 + 2, 3)
    assert np.array_equal(tile(grid, 0, 0), pixels)  # the original, unchanged, beside its reconstruction
    pairs = np.stack([row, np.array(rebuilt["x"][0], np.float32)]).reshape(2, *SHAPE)
    assert picture.content == png_bytes(image_grid(pairs, columns=2))

    files = [("file", ("a.png", png, "image/png")), ("file", ("b.png", rgb_picture(3)[1], "image/png"))]
    encoded = http.post("/v1/encode", files=files)
    assert encoded.status_code == 200, encoded.text
    assert np.array(encoded.json()["mean"]).shape == (2, L)


def test_vae_client_picture_commands_work_in_colour(http_server, tmp_path):
    pixels, png = rgb_picture(4)
    (tmp_path / "some.png").write_bytes(png)
    Image.fromarray(rgb_picture(5)[0]).resize((32, 32)).save(tmp_path / "other.png")  # resized on reading

    vae_client(
        http_server, "reconstruct", "-i", str(tmp_path / "some.png"), "-o", str(tmp_path / "recon.png")
    )
    grid = rgb(tmp_path / "recon.png")
    assert grid.shape == (18 + 2, 2 * 18 + 2, 3) and np.array_equal(tile(grid, 0, 0), pixels)

    vae_client(http_server, "encode", "-i", str(tmp_path / "some.png"), "-o", str(tmp_path / "mean.npy"))
    mean = np.load(tmp_path / "mean.npy")
    np.testing.assert_allclose(mean, (pixels.reshape(1, -1) / np.float32(255)) @ W_MEAN, atol=1e-5)

    out = tmp_path / "decoded"
    vae_client(
        http_server, "decode", "-i", str(tmp_path / "mean.npy"), "-o", f"{out}.npy", "--png", f"{out}.png"
    )
    assert rgb(Path(f"{out}.png")).shape == (16, 16, 3)  # one image alone: no frame

    line = tmp_path / "line.png"
    args = ["--a", str(tmp_path / "some.png"), "--b", str(tmp_path / "other.png"), "--steps", "3"]
    vae_client(http_server, "interpolate", *args, "-o", str(line))
    assert rgb(line).shape == (18 + 2, 3 * 18 + 2, 3)


RGBA = """
const canvas = arguments[0];
return Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data);
"""


def _rgb_of(browser: webdriver.Chrome, canvas: object) -> np.ndarray:
    rgba = np.array(browser.execute_script(RGBA, canvas), dtype=np.uint8)
    return rgba.reshape(-1, 4)[:, :3].reshape(SHAPE)


@pytest.mark.slow
def test_the_playground_draws_and_reads_colour(browser, pointer, http_server):
    """The page paints the model's RGB rows as `vae-client` would, and sends a drawing as RGB rows
    (a grey row would be refused: the wrong length)."""
    browser.get(http_server.url + "/")

    def by_test_id(name: str) -> object:
        return browser.find_element(By.CSS_SELECTOR, f"[data-testid='{name}']")

    def tiles() -> list:
        return browser.find_elements(By.CSS_SELECTOR, "[data-testid='sample-grid'] canvas")

    wait_for(lambda: len(tiles()) == 16, "the first grid")
    for field, value in (("sample-n", "4"), ("sample-seed", "3")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    by_test_id("sample-button").click()
    wait_for(lambda: len(tiles()) == 4, "a grid of 4")
    shown = np.stack([_rgb_of(browser, canvas) for canvas in tiles()]).astype(int)
    drawn = np.array(httpx.get(f"{http_server.url}/v1/sample", params={"n": 4, "seed": 3}).json()["x"])
    expected = np.round(np.clip(drawn.reshape(4, *SHAPE), 0, 1) * 255)
    assert np.abs(shown - expected).max() <= 1
    assert np.abs(expected[..., 0] - expected[..., 1]).max() > 30  # the channels really differ

    reconstruction = by_test_id("reconstruction")
    ink = browser.find_element(By.ID, "ink")
    assert ink.is_displayed()
    browser.execute_script("arguments[0].value = '#ff2000'", ink)
    strokes = pointer().move_to_element_with_offset(by_test_id("draw-canvas"), -40, -40)
    strokes.click_and_hold()
    for dx, dy in ((0, 40), (40, 0), (0, -40)):
        strokes.move_by_offset(dx, dy)
    strokes.release().perform()
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "[data-testid='posterior-samples'] canvas")) == 6,
        "posterior draws of the drawing",
    )
    sketch = np.array(browser.execute_script(RGBA, by_test_id("draw-canvas")), dtype=np.uint8).reshape(-1, 4)
    assert {tuple(pixel) for pixel in sketch[:, :3]} >= {(0, 0, 0), (255, 32, 0)}  # drawn in the ink chosen
    painted = _rgb_of(browser, reconstruction).astype(int)
    assert np.abs(painted[..., 0] - painted[..., 2]).max() > 10, "the reconstruction is grey"
    assert not by_test_id("error").is_displayed()
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_model_without_a_picture_shape_is_refused_pictures_in_one_line(tmp_path):
    write_version_files(tmp_path, GOOD_ENCODER, GOOD_DECODER, image_shape=(6,))
    proc, _, http_port = start_vae_serve_http("--model-repository", str(tmp_path), "--model", "m")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
            png = client.get("/v1/sample", params={"n": 2}, headers={"Accept": "image/png"})
            assert png.status_code == 400
            assert "images [6] have no PNG form" in png.json()["error"]
            upload = client.post(
                "/v1/encode", content=rgb_picture(6)[1], headers={"Content-Type": "image/png"}
            )
            assert upload.status_code == 400
            assert "pictures need an image shape [H, W] or [H, W, 3]" in upload.json()["error"]
            assert client.get("/v1/sample", params={"n": 2}).status_code == 200  # JSON as ever
    finally:
        proc.terminate()
        proc.wait(30)
