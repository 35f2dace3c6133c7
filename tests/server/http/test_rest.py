"""The /v1 REST API for people, over real sockets: JSON, pictures in and out, the docs page."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from openapi_spec_validator import validate
from PIL import Image
from support import DEFAULT_MODEL_DIR, DEFAULT_VERSION

from vae_serve.client import VaeClient
from vae_serve.grid import image_grid, png_bytes

L, D = 32, 784


def test_model_mirrors_get_model_info(http, http_server):
    info = http.get("/v1/model").json()
    with VaeClient(http_server.grpc_target) as client:
        native = client.model_info()
    assert (info["name"], info["version"], info["latent_dim"]) == (
        native.name,
        native.version,
        native.latent_dim,
    )
    assert info["image_shape"] == [28, 28] and info["limits"]["max_message_bytes"] == 32 << 20
    assert info["card"] == native.card


def test_the_model_card_is_typed_json(http):
    """The card as model.json writes it: numbers are JSON numbers, objects are objects."""
    card = http.get("/v1/model").json()["card"]
    assert card == json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert card["epochs"] == 40 and isinstance(card["epochs"], int) and isinstance(card["lr"], float)
    assert len(card["principal_directions"]["mean"]) == L


def test_encode_and_decode_equal_onnx_runtime(http, direct):
    x = np.random.default_rng(0).random((3, D), dtype=np.float32)
    encoded = http.post("/v1/encode", json={"x": x.tolist()}).json()
    mean, logvar = direct[0].run(["mean", "logvar"], {"x": x})
    np.testing.assert_allclose(np.array(encoded["mean"]), mean, atol=1e-6)
    np.testing.assert_allclose(np.array(encoded["logvar"]), logvar, atol=1e-6)
    decoded = http.post("/v1/decode", json={"z": encoded["mean"], "model_version": DEFAULT_VERSION}).json()
    np.testing.assert_allclose(np.array(decoded["x"]), direct[1].run(None, {"z": mean})[0], atol=1e-6)
    assert decoded["model_version"] == DEFAULT_VERSION


def test_seeds_reproduce_across_grpc_and_rest(http, http_server):
    with VaeClient(http_server.grpc_target) as client:
        z, x = client.sample(4, seed=7, decode=True)
    rest = http.post("/v1/sample", json={"num_samples": 4, "seed": 7}).json()
    assert np.array_equal(np.array(rest["z"], np.float32), z) and np.array_equal(
        np.array(rest["x"], np.float32), x
    )
    link = http.get("/v1/sample", params={"n": 4, "seed": 7, "decode": "false"}).json()
    assert np.array_equal(np.array(link["z"], np.float32), z) and link["x"] is None


def test_the_png_grid_is_what_vae_client_writes(http, http_server, tmp_path):
    grid = http.get("/v1/sample", params={"n": 64, "seed": 7}, headers={"Accept": "image/png"})
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    written = tmp_path / "samples.png"
    cli = [sys.executable, "-m", "vae_serve.client.cli", "--target", http_server.grpc_target]
    subprocess.run([*cli, "sample", "-n", "64", "--seed", "7", "-o", str(written)], check=True, timeout=60)
    assert grid.content == written.read_bytes()


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        ("image/png", "image/png"),
        ("image/png;q=0", "application/json"),
        ("image/pngx", "application/json"),
        ("image/*, application/json;q=0.5", "image/png"),
        ("*/*", "application/json"),
    ],
)
def test_accept_is_read_with_its_q_values(http, accept, kind):
    for reply in (
        http.get("/v1/sample", params={"n": 1}, headers={"Accept": accept}),
        http.post("/v1/decode", json={"z": [[0.0] * L]}, headers={"Accept": accept}),
    ):
        assert reply.status_code == 200 and reply.headers["content-type"] == kind


def test_curl_gets_the_grid(http_server, tmp_path):
    out = tmp_path / "grid.png"
    subprocess.run(
        [
            "curl",
            "-sf",
            "-o",
            str(out),
            f"{http_server.url}/v1/sample?n=16&seed=3",
            "-H",
            "Accept: image/png",
        ],
        check=True,
        timeout=30,
    )
    assert Image.open(out).size == (4 * (56 + 2) + 2,) * 2


def _picture(seed: int) -> tuple[np.ndarray, bytes]:
    pixels = (np.random.default_rng(seed).random((28, 28)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return pixels.reshape(-1).astype(np.float32) / 255, out.getvalue()


def test_an_uploaded_picture_encodes_as_its_pixels_do(http, direct):
    row, png = _picture(1)
    by_upload = http.post("/v1/encode", content=png, headers={"Content-Type": "image/png"}).json()
    mean, _ = direct[0].run(["mean", "logvar"], {"x": row[None]})
    np.testing.assert_allclose(np.array(by_upload["mean"]), mean, atol=1e-6)
    files = [("file", ("a.png", png, "image/png")), ("file", ("b.png", _picture(2)[1], "image/png"))]
    by_form = http.post("/v1/encode", files=files).json()
    assert np.array(by_form["mean"]).shape == (2, L)


def test_reconstruct_round_trip_in_json_and_png(http, direct):
    row, png = _picture(3)
    rebuilt = http.post("/v1/reconstruct", content=png, headers={"Content-Type": "image/png"}).json()
    mean, _ = direct[0].run(["mean", "logvar"], {"x": row[None]})
    np.testing.assert_allclose(np.array(rebuilt["x"]), direct[1].run(None, {"z": mean})[0], atol=1e-5)
    picture = http.post(
        "/v1/reconstruct", content=png, headers={"Content-Type": "image/png", "Accept": "image/png"}
    )
    pairs = np.stack([row, np.array(rebuilt["x"][0], np.float32)]).reshape(2, 28, 28)
    assert picture.content == png_bytes(image_grid(pairs, columns=2))


def test_malformed_multipart_forms_get_400(http):
    no_boundary = http.post("/v1/encode", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and "multipart form" in no_boundary.json()["error"]
    files = [("file", (f"{i}.png", b"x", "image/png")) for i in range(65)]
    too_many = http.post("/v1/encode", files=files)
    assert too_many.status_code == 400 and "multipart form" in too_many.json()["error"]


# What a web page can send anywhere without a CORS preflight (and a picture where none is taken).
REFUSED = {
    "text/plain": ["/v1/decode", "/v1/sample", "/v1/encode", "/v1/reconstruct"],
    "text/plain; charset=utf-8": ["/v1/sample"],
    "application/x-www-form-urlencoded": ["/v1/decode", "/v1/sample", "/v1/encode", "/v1/reconstruct"],
    "application/jsonx": ["/v1/sample"],
    "image/png": ["/v1/decode", "/v1/sample"],
    "multipart/form-data; boundary=x": ["/v1/decode", "/v1/sample"],
}
JSON_BODIES = {
    "/v1/decode": {"z": [[0.0] * L]},
    "/v1/sample": {"num_samples": 1},
    "/v1/encode": {"x": [[0.0] * D]},
    "/v1/reconstruct": {"x": [[0.0] * D]},
}


@pytest.mark.parametrize(
    ("kind", "path"), [(kind, path) for kind, paths in REFUSED.items() for path in paths]
)
def test_a_body_of_another_type_is_a_415_in_one_line(http, kind, path):
    reply = http.post(path, content=json.dumps(JSON_BODIES[path]), headers={"Content-Type": kind})
    assert reply.status_code == 415, reply.text
    assert reply.headers["content-type"] == "application/json" and "\n" not in reply.text
    error = reply.json()["error"]
    assert error.startswith(f"Content-Type {kind.split(';')[0]!r} is not taken here; send application/json")
    taken = error.partition("; send ")[2]
    assert ("image/png" in taken and "multipart/form-data" in taken) == (
        path in ("/v1/encode", "/v1/reconstruct")
    )


@pytest.mark.parametrize(
    "kind", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", None]
)
def test_json_with_parameters_or_unlabelled_is_served(http, kind):
    headers = {} if kind is None else {"Content-Type": kind}
    for path, body in JSON_BODIES.items():
        reply = http.post(path, content=json.dumps(body), headers=headers)
        assert reply.status_code == 200, (path, reply.text)


def test_an_unlabelled_body_from_a_browser_is_refused(http):
    """A page can send a Blob without a type and no preflight; the browser adds Origin to any POST."""
    reply = http.post("/v1/sample", content=b"{}", headers={"Origin": "https://elsewhere.example"})
    assert reply.status_code == 415 and "a Content-Type" in reply.json()["error"]


HOSTILE_UPLOADS = {
    "not a picture": (b"GIF89a-not-really", "image/png", "not a readable image"),
    "no known format": (b"plain text, not an image", "image/png", "not a readable image"),
    "a huge picture": (None, "image/png", "above the limit of 1048576 pixels"),
}


@pytest.mark.parametrize("case", list(HOSTILE_UPLOADS))
def test_bad_uploads_get_one_line_errors(http, case):
    body, kind, text = HOSTILE_UPLOADS[case]
    if body is None:  # 8192 x 8192, a few KB compressed: refused from its header
        out = io.BytesIO()
        Image.new("L", (8192, 8192)).save(out, format="PNG")
        body = out.getvalue()
    reply = http.post("/v1/encode", content=body, headers={"Content-Type": kind})
    assert reply.status_code == 400 and text in reply.json()["error"]
    assert "object at 0x" not in reply.json()["error"]  # no Python reprs reach a client


BAD = {
    "extra field": ("/v1/decode", {"z": [[0.0] * L], "zz": 1}, "Extra inputs"),
    "wrong width": ("/v1/decode", {"z": [[0.0] * 3]}, "z"),
    "ragged rows": ("/v1/decode", {"z": [[0.0] * L, [0.0]]}, "rows of different lengths"),
    "strings": ("/v1/decode", {"z": [["a"] * L]}, "z.0.0"),
    "too many samples": ("/v1/sample", {"num_samples": 10**6}, "num_samples"),
    "negative seed": ("/v1/sample", {"seed": -1}, "seed"),
    "png without decode": ("/v1/sample", {"decode": False}, None),
    "no rows": ("/v1/decode", {"z": []}, "needs at least one row"),
    "no rows to encode": ("/v1/encode", {"x": []}, "needs at least one row"),
    "numbers as strings": ("/v1/decode", {"z": [["0.5"] * L]}, "z.0.0"),
    "booleans": ("/v1/decode", {"z": [[True] * L]}, "z.0.0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_bodies_get_400(http, case):
    path, body, text = BAD[case]
    headers = {"Accept": "image/png"} if case == "png without decode" else {}
    reply = http.post(path, json=body, headers=headers)
    assert reply.status_code == 400, reply.text
    assert text is None or text in reply.json()["error"]


def test_a_json_reply_over_the_message_limit_is_refused_before_computing(http):
    reply = http.post("/v1/sample", json={"num_samples": 8192})  # 8192 x 816 values as text
    assert reply.status_code == 413 and "send fewer rows" in reply.json()["error"]
    most = http.get("/v1/model").json()["limits"]["max_samples"]
    assert http.get("/v1/sample", params={"n": most, "decode": "false"}).status_code == 200  # z alone fits


def test_the_openapi_document_is_valid_and_the_docs_are_served_from_here(http):
    spec = http.get("/openapi.json").json()
    validate(spec)
    assert {"/v1/encode", "/v1/sample", "/v2/models/{model_name}/infer"} <= set(spec["paths"])
    page = http.get("/docs").text
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)""", page)
    assert urls and all(url.startswith("/") for url in urls), urls
    assert "http://" not in page and "https://" not in page
    for url in urls:
        assert http.get(url).status_code == 200, url


def test_no_request_an_infer_route_takes_is_another_routes():
    """The app tries the infer routes first (they carry the traffic), the others in their order
    (`/v2/models/stats` before `/v2/models/{model_name}`): safe while none shares a request with an
    infer route."""
    from starlette.routing import Match

    from vae_serve.server.http.app import api_routes

    api = api_routes()
    infer = [route for route in api if route.path.endswith("/infer")]
    assert len(infer) == 2
    for route in api:
        path = re.sub(r"\{[^}]+\}", "m", route.path)
        for method in route.methods or ():
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            taking = [other for other in api if other.matches(scope)[0] is Match.FULL]
            assert route in taking
            if any(other in infer for other in taking):
                assert taking == [route], (method, path, [other.path for other in taking])
