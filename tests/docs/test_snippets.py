"""Every shell and Python snippet of the README and of the getting-started page, and the Python
snippets of the API pages, run against a live server as a reader would run them, and what they
write checked.

The snippets name the default ports; the test serves on free ones and points the snippets there
(`localhost:8000`, `127.0.0.1:8000` and `127.0.0.1:50051` are replaced, `VAE_TARGET` is set for
`vae-client`).
`make serve` and `make test` are what CI runs, so they are not run again here.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import start_vae_serve_http

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
API_PAGES = [ROOT / "docs" / "api" / "grpc.md", ROOT / "docs" / "api" / "kserve.md"]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
NOT_RUN = ("make ", "export PATH=")  # CI runs the make targets; the test sets PATH itself


def snippets(language: str, pages: list[Path] = PAGES) -> list[tuple[str, str]]:
    found = []
    for page in pages:
        for kind, body in FENCE.findall(page.read_text()):
            if kind == language:
                found.append((page.name, body))
    return found


def commands(script: str) -> list[str]:
    """The commands of a shell snippet: continuation lines joined, comments and blank lines left out."""
    joined = script.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, int]]:
    proc, grpc_port, http_port = start_vae_serve_http()
    try:
        yield grpc_port, http_port
    finally:
        proc.terminate()
        proc.wait(30)


def picture(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("L"), dtype=np.float32) / 255


def test_the_pages_have_snippets_to_run():
    assert len(snippets("sh")) >= 3 and len(snippets("python")) >= 2


@pytest.mark.parametrize(("page", "script"), snippets("sh"), ids=lambda value: str(value)[:40])
def test_each_shell_snippet_runs(served, tmp_path, page, script):
    grpc_port, http_port = served
    # curl as the snippets write it exits 0 on an HTTP error: here it fails on one, and says why.
    config = tmp_path / "curl"
    config.mkdir()
    (config / ".curlrc").write_text("fail-with-body\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "VAE_TARGET": f"127.0.0.1:{grpc_port}",
        "CURL_HOME": str(config),
    }
    work = tmp_path / "work"  # what the snippets write, and nothing else
    work.mkdir()
    for snippet in commands(script):
        if snippet.startswith(NOT_RUN):
            continue
        command = snippet.replace("localhost:8000", f"127.0.0.1:{http_port}")
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], cwd=work, env=env, capture_output=True, timeout=120
        )
        said = (done.stderr + done.stdout).decode(errors="replace")[-2000:]
        assert done.returncode == 0, f"{page}: {command}\n{said}"
        if snippet.startswith("vae-client info"):
            assert b"fashion-vae" in done.stdout
        if snippet.startswith("curl localhost") or "/v1/model" in snippet:  # a GET: the model named
            assert b'"name":"fashion-vae"' in done.stdout, said
        if "/v1/decode" in snippet:  # one latent in, one image out, as JSON
            reply = json.loads(done.stdout)
            assert np.asarray(reply["x"]).shape == (1, 784), said
    written = {path.name: path for path in work.iterdir()}
    if "samples.png" in written and "grid.png" in written:  # "the same grid", as the comment says
        assert written["samples.png"].read_bytes() == written["grid.png"].read_bytes()
    for name, path in written.items():
        assert picture(path).size > 0, name
    if "one-recon.png" in written:  # the picture beside its reconstruction: they resemble each other
        pair = picture(written["one-recon.png"])  # two 56-pixel tiles, 2 pixels apart and around
        sent, back = pair[2:58, 2:58], pair[2:58, 60:116]
        assert pair.shape == (60, 118)
        assert np.corrcoef(sent.ravel(), back.ravel())[0, 1] > 0.8


# Run after an API page's snippet, in its process: decoded latents are pictures of 784 intensities.
PICTURES_CHECK = """
if "images" in dir():
    import numpy as _np
    _pictures = _np.concatenate(images) if isinstance(images, list) else _np.asarray(images)
    assert _pictures.shape[1:] == (784,) and len(_pictures) >= 4, _pictures.shape
    assert _pictures.min() >= 0 and _pictures.max() <= 1
"""


@pytest.mark.parametrize(("page", "source"), snippets("python", API_PAGES), ids=lambda value: str(value)[:40])
def test_each_api_pages_python_snippet_runs(served, page, source):
    """In a process of its own, as a reader runs it (tritonclient's protobuf modules and the
    server's cannot share one process)."""
    grpc_port, http_port = served
    source = source.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
    source = source.replace("127.0.0.1:8000", f"127.0.0.1:{http_port}")
    done = subprocess.run([sys.executable, "-c", source + PICTURES_CHECK], capture_output=True, timeout=120)
    assert done.returncode == 0, f"{page}:\n{source}\n{done.stderr.decode(errors='replace')[-2000:]}"


@pytest.mark.parametrize(("page", "source"), snippets("python"), ids=lambda value: str(value)[:40])
def test_each_python_snippet_runs(served, page, source):
    grpc_port, _ = served
    scope: dict[str, object] = {}
    exec(compile(source.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}"), page, "exec"), scope)
    images = scope["images"]
    assert isinstance(images, np.ndarray) and images.shape == (16, 784)
    assert scope["mean"].shape == (16, 32)  # type: ignore[attr-defined]
    if "again" in scope:  # a reconstruction resembles what it was made from
        again = scope["again"]
        assert np.corrcoef(np.ravel(again), np.ravel(images))[0, 1] > 0.8
