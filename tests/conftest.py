"""Shared fixtures: where the real data and the committed default model live, and one real server
per test module (127.0.0.1, ephemeral ports) for the client and server tests."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import onnxruntime as ort
import pytest
from hostile_files import npy_file, png_file
from support import RunningServer

# Every server a test starts, in process or not, serves HTTP on loopback at a free port unless the
# test says otherwise (workers need a fixed one: those tests pass --http-port).
os.environ.setdefault("VAE_HTTP_HOST", "127.0.0.1")
os.environ.setdefault("VAE_HTTP_PORT", "0")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """Debian's dataset-fashion-mnist, which `make test` installs; its absence is a failure."""
    from vae_serve.training.data import DEFAULT_DATA_DIR

    if not DEFAULT_DATA_DIR.is_dir():
        pytest.fail(f"{DEFAULT_DATA_DIR} missing: apt-get install dataset-fashion-mnist (make test does)")
    return DEFAULT_DATA_DIR


@pytest.fixture(scope="session")
def direct() -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """The default model's encoder and decoder in ONNX Runtime, run directly: what served
    results are checked against."""
    from support import DEFAULT_MODEL_DIR

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(DEFAULT_MODEL_DIR / name), providers=["CPUExecutionProvider"])

    return session("encoder.onnx"), session("decoder.onnx")


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    server = RunningServer()
    yield server
    server.stop()


@pytest.fixture
def spans():
    """The server's tracing on, into memory, for one test; off again after."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from vae_serve.server.telemetry import tracing

    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


@pytest.fixture(scope="session")
def write_png() -> Callable[..., None]:
    return png_file


@pytest.fixture(scope="session")
def write_npy() -> Callable[..., None]:
    return npy_file
