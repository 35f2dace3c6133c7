"""What several test folders share: where things are, and a real server to talk to."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from procs import free_port as free_port  # procs.py's helpers, re-exported: tests take them from here
from procs import listening_ports as listening_ports
from procs import read_until as read_until
from procs import start_nginx as start_nginx
from procs import start_server, start_server_ports

from vae_serve.server.app import VaeServer
from vae_serve.server.models.repository import VersionFiles, resolve
from vae_serve.server.settings import Settings
from vae_serve.server.telemetry.metrics import Metrics

REPO_ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = REPO_ROOT / "models"
DEFAULT_MODEL_DIR = REPOSITORY / "fashion-vae" / "2"  # the version served by default: the highest
DEFAULT_VERSION = DEFAULT_MODEL_DIR.name  # "2": what a test means by the version served by default


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed IDX file of uint8 `array`, as the original MNIST files are laid out."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


# How long a condition may take on a loaded machine (a parallel run on two cores) before a test
# gives up on it. It only bounds a hang: no test depends on how long a wait takes.
PATIENCE_S = 90

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, context: Callable[[], str] | None = None) -> T:
    """The first true value of `condition()`, the one way a test waits for the system: looked at
    every few milliseconds, less often the longer it takes (a busy server is not polled flat out).
    After PATIENCE_S it fails saying what it waited for, and `context()` (a log, say) if given.
    From a coroutine: `await asyncio.to_thread(wait_for, ...)`, so the event loop keeps running."""
    deadline = time.monotonic() + PATIENCE_S
    pause = 0.002
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {PATIENCE_S} s" + (f":\n{context()}" if context else ""))
        time.sleep(pause)
        pause = min(pause * 1.5, 0.05)
    return result


class LoopThread:
    """An event loop running in a thread of its own; `call` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class RunningServer(LoopThread):
    """Starts a VaeServer on its own event loop thread; `stop()` drains it like SIGTERM would."""

    def __init__(self, start_timeout: float = 60, **overrides: object) -> None:
        defaults = {"host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0}
        settings = Settings(**{**defaults, "model_repository": REPOSITORY, **overrides})
        self.server = VaeServer(settings, Metrics())
        super().__init__()
        self.call(self.server.start(), timeout=start_timeout)
        self.target = f"127.0.0.1:{self.server.port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def stop(self, grace: float = 5.0) -> None:
        if self.loop.is_running():
            self.call(self.server.stop(grace))
        self.close()


class InProcessHttp(LoopThread):
    """A VaeServer's HTTP app called in this process through httpx's ASGI transport: no socket and
    no gRPC port, for the tests of codecs and routes. `get`, `post` and `request` as httpx.Client
    has them."""

    def __init__(self, **overrides: object) -> None:
        self.server = VaeServer(Settings(**{"model_repository": REPOSITORY, **overrides}), Metrics())
        super().__init__()
        self.client = self.call(self._start())

    async def _start(self) -> httpx.AsyncClient:
        self.server.load()
        await self.server.state.serve()
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(self.server.http_app()), base_url="http://in-process"
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.call(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def stop(self) -> None:
        self.call(self.client.aclose())
        self.call(self.server.stop(0))
        self.close()


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and, signed by it, a server certificate for 127.0.0.1/localhost and a client
    certificate (for mutual TLS), made with the openssl CLI."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=vae-serve test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        (folder / f"{name}.ext").write_text(extension + "\n" if extension else "basicConstraints=CA:FALSE\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
        )
    return {
        name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


def start_vae_serve(*args: str, timeout: float = 60) -> tuple[subprocess.Popen, int]:
    """A real `vae-serve` process on 127.0.0.1; returns it and the gRPC port from its log."""
    cmd = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1", *args]
    return start_server(cmd, pattern=r"serving on 127\.0\.0\.1:(\d+)", timeout=timeout)


def start_vae_serve_http(*args: str, timeout: float = 60) -> tuple[subprocess.Popen, int, int]:
    """`start_vae_serve` with HTTP on a free loopback port: the process, its gRPC and HTTP ports."""
    cmd = ["-m", "vae_serve.server.cli", "--host", "127.0.0.1", "--metrics-host", "127.0.0.1"]
    cmd += [
        "--http",
        "--http-host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--port",
        "0",
        "--metrics-port",
        "0",
        *args,
    ]
    pattern = r"serving on 127\.0\.0\.1:(\d+) .*HTTP on 127\.0\.0\.1:(\d+)"
    proc, (grpc_port, http_port) = start_server_ports(cmd, pattern, timeout=timeout)
    return proc, grpc_port, http_port


# A tiny model repository of real ONNX graphs with chosen names and widths (root/m/1/).
def linear_graph(
    path: Path,
    input_name: str,
    width: int,
    outputs: dict[str, int],
    batch: str | int = "batch",
    fill: float = 0.0,
    external_data: str | None = None,
) -> None:
    """A tiny real ONNX graph: each output = input @ W (every weight `fill`), with the given names and
    widths; `external_data` names a file next to it that then holds the weights (ONNX external data)."""
    nodes, inits, outs = [], [], []
    for name, out_width in outputs.items():
        w = numpy_helper.from_array(np.full((width, out_width), fill, np.float32), f"W_{name}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [input_name, f"W_{name}"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, out_width]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, width])],
        outs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if external_data is None:
        onnx.save(model, path)
    else:
        onnx.save(model, path, save_as_external_data=True, location=external_data, size_threshold=0)


def write_version_files(
    root: Path,
    encoder: dict,
    decoder: dict,
    input_dim: int = 6,
    latent_dim: int = 2,
    image_shape: tuple = (2, 3),
    *,
    model: str = "m",
    version: str = "1",
    card: dict | None = None,
    record_bytes: bool = False,
) -> Path:
    """Writes `root/model/version/` (two graphs and a card that describes them) and returns its path,
    without checking it: `card` entries replace the generated ones (to write a wrong card on purpose),
    `record_bytes` adds each graph's size to the card, as `vae-train` does."""
    path = root / model / version
    path.mkdir(parents=True)
    linear_graph(path / "encoder.onnx", **encoder)
    linear_graph(path / "decoder.onnx", **decoder)
    files = {}
    for f in ("encoder.onnx", "decoder.onnx"):
        files[f] = {"sha256": hashlib.sha256((path / f).read_bytes()).hexdigest()}
        if record_bytes:
            files[f]["bytes"] = (path / f).stat().st_size
    generated = {
        "input_dim": input_dim,
        "latent_dim": latent_dim,
        "image_shape": list(image_shape),
        "files": files,
    }
    (path / "model.json").write_text(json.dumps({**generated, **(card or {})}))
    return path


def write_version(
    root: Path,
    encoder: dict,
    decoder: dict,
    input_dim: int = 6,
    latent_dim: int = 2,
    image_shape: tuple = (2, 3),
    **options: object,
) -> VersionFiles:
    """`write_version_files`, then the version resolved (card read, graphs verified)."""
    path = write_version_files(root, encoder, decoder, input_dim, latent_dim, image_shape, **options)
    return resolve(root, path.parent.name, path.name)


GOOD_ENCODER = {"input_name": "x", "width": 6, "outputs": {"mean": 2, "logvar": 2}}
GOOD_DECODER = {"input_name": "z", "width": 2, "outputs": {"x": 6}}


def read_reply(sock: socket.socket) -> str:
    """One whole response (head and Content-Length body) as text."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.I)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()
