"""Shared fixtures: where the real data and the committed default model live, and one real server
per test module (127.0.0.1, ephemeral ports) for the client and server tests; and, under
pytest-xdist, the turns that let a test marked `timing` run alone."""

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import onnxruntime as ort
import pytest
from hostile_files import npy_file, png_file
from support import RunningServer

# Where PYTHONDONTWRITEBYTECODE is set (this project's build machines set it), each of the
# hundreds of Python processes the suite starts (servers, clients, trainers), and each pytest-xdist
# worker's assertion rewriting, would compile the same modules again.
# The suite keeps compiled bytecode, as Python does by default (__pycache__ is ignored by git).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# Every server a test starts, in process or not, serves HTTP on loopback at a free port unless the
# test says otherwise (workers need a fixed one: those tests pass --http-port).
os.environ.setdefault("VAE_HTTP_HOST", "127.0.0.1")
os.environ.setdefault("VAE_HTTP_PORT", "0")


# Tests marked `timing` hold the server to how promptly it answers (event-loop gaps, latencies,
# a deadline's effect). Under pytest-xdist each runs alone, so that a neighbour's load never shows
# in its measurement: every test takes a turn on a lock file shared by the workers, a shared turn
# for an ordinary test and an exclusive one for a timed test, which waits for the tests in progress
# while the others wait for it. A second file is a turnstile that keeps ordinary tests from
# slipping in ahead of a timed one that waits (two busy workers could starve it otherwise).
_TURNS_KEY = "vae_serve_turns"
_TURNS_FOLDER = pytest.StashKey[Path]()
_turns: tuple[int, int] | None = None  # a worker's (turnstile, lock) descriptors


def pytest_configure(config: pytest.Config) -> None:
    global _turns
    folder = getattr(config, "workerinput", {}).get(_TURNS_KEY)
    if folder is None:  # the controller, or a run without workers: the controller owns the files
        config.stash[_TURNS_FOLDER] = Path(tempfile.mkdtemp(prefix="vae-serve-turns-"))
    else:
        _turns = tuple(os.open(Path(folder) / name, os.O_RDWR | os.O_CREAT) for name in ("turnstile", "lock"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # pytest-xdist's: what the controller tells each worker
    node.workerinput[_TURNS_KEY] = str(node.config.stash[_TURNS_FOLDER])


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TURNS_FOLDER in config.stash:
        shutil.rmtree(config.stash[_TURNS_FOLDER], ignore_errors=True)


def _timed(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("timing") is not None


def _take_turn(alone: bool) -> None:
    turnstile, lock = _turns
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    finally:
        fcntl.flock(turnstile, fcntl.LOCK_UN)


_alone = False  # this worker holds the lock exclusively, from one timed test to the next


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Setup, call and teardown (where module fixtures start and stop servers) inside the turn;
    consecutive timed tests keep theirs, so the others run between them only once."""
    global _alone
    if _turns is None:  # not a pytest-xdist worker: every test runs alone anyway
        return (yield)
    if not _alone:
        _take_turn(alone=_timed(item))
    try:
        return (yield)
    finally:
        _alone = _timed(item) and _timed(nextitem)
        if not _alone:
            fcntl.flock(_turns[1], fcntl.LOCK_UN)


@pytest.fixture
def give_way() -> Callable[[], None]:
    """For a long test that loads the machine: a call lets a timed test that waits for it run first
    (this one waits meanwhile), so that timed tests need not wait for the whole of it."""

    def call() -> None:
        if _turns is not None and not _alone:
            fcntl.flock(_turns[1], fcntl.LOCK_UN)
            _take_turn(alone=False)

    return call


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with tests marked slow first, each kept whole: pytest-xdist hands a worker one module
    at a time (--dist loadfile), so the longest start early and the short ones even out the end.
    Within a module its timed tests come first, together: one wait for the machine, not one each."""
    first_seen: dict[Path, int] = {}
    has_slow: set[Path] = set()
    for index, item in enumerate(items):
        first_seen.setdefault(item.path, index)
        if item.get_closest_marker("slow") is not None:
            has_slow.add(item.path)
    items.sort(key=lambda item: (item.path not in has_slow, first_seen[item.path], not _timed(item)))


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
