"""Shared fixtures: where the real data and the committed default model live, and one real server
per test module (127.0.0.1, ephemeral ports) for the client and server tests; and, under
pytest-xdist, the turns that let a test marked `timing` run alone."""

import contextlib
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
# a deadline's effect), so under pytest-xdist a neighbour's load must never show in their
# measurement. They take turns among themselves on a lock file shared by the workers. Where the
# machine lets a process raise its scheduling priority again (root, or a nice limit that allows
# it), each worker runs its ordinary tests, and every thread and process they start, at nice
# `_NICE`, and a timed test's worker raises its whole tree back to nice 0 for the test: the timed
# test has the cores whenever it wants them while the others go on with what it leaves. Elsewhere
# a timed test takes the lock exclusively against ordinary tests, which share it: it waits for the
# tests in progress while the others wait for it, and a second file, a turnstile, keeps ordinary
# tests from slipping in ahead of a timed one that waits (two busy workers could starve it).
_TURNS_KEY = "vae_serve_turns"
_TURNS_FOLDER = pytest.StashKey[Path]()
_NICE = 10
_turns: tuple[int, int] | None = None  # a worker's (turnstile, lock) descriptors
_yields = False  # this worker's ordinary tests run at nice _NICE, and it can raise its priority again


def _tree() -> list[int]:
    """This process and every process it started, however deep."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # it ended while the listing was read
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree = [os.getpid()]
    for pid in tree:
        tree += children.get(pid, [])
    return tree


def _renice(nice: int) -> None:
    """Every thread of this worker's tree (Linux schedules, and nices, threads one by one)."""
    for pid in _tree():
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for thread in threads:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(thread), nice)


def _can_yield() -> bool:
    """Lower this worker's priority, and say whether it can be raised again."""
    _renice(_NICE)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except PermissionError:
        return False
    os.setpriority(os.PRIO_PROCESS, 0, _NICE)
    return True


def pytest_configure(config: pytest.Config) -> None:
    global _turns, _yields
    folder = getattr(config, "workerinput", {}).get(_TURNS_KEY)
    if folder is None:  # the controller, or a run without workers: the controller owns the files
        config.stash[_TURNS_FOLDER] = Path(tempfile.mkdtemp(prefix="vae-serve-turns-"))
    else:
        _turns = tuple(os.open(Path(folder) / name, os.O_RDWR | os.O_CREAT) for name in ("turnstile", "lock"))
        _yields = _can_yield()


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
    timed = _timed(item)
    if _turns is None or (_yields and not timed):  # alone anyway, or a turn nobody waits for
        return (yield)
    if not _alone:
        _take_turn(alone=timed)
        if _yields:
            _renice(0)
    try:
        return (yield)
    finally:
        _alone = timed and _timed(nextitem)
        if not _alone:
            if _yields:
                _renice(_NICE)
            fcntl.flock(_turns[1], fcntl.LOCK_UN)


@pytest.fixture
def give_way() -> Callable[[], None]:
    """For a long test that loads the machine: a call lets a timed test that waits for it run first
    (this one waits meanwhile), so that timed tests need not wait for the whole of it."""

    def call() -> None:
        if _turns is not None and not _alone and not _yields:
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
