"""The local side of object storage: a version is assembled in a hidden staging directory beside
its place in the cache, every file checked, then renamed into place in one step.

The cache is a model repository like any other (`<cache>/<name>/<version>/`), so
`repository.resolve` reads it unchanged; it skips hidden entries, and staging directories are
hidden (`.<version>.partial-*`). Each staging directory is locked (flock) while its writer lives,
so a sweep removes only those a crash left behind, in this process or another sharing the cache.
Every function here blocks on the disk: callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vae_serve.errors import ModelLoadError

from .repository import MAX_CARD_BYTES, MAX_ENTRIES

__all__ = ["CARD_FILE", "Sink", "Staging", "VersionRefused", "is_cached"]

CARD_FILE = "model.json"
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_HASH_CHUNK = 1 << 20


class VersionRefused(ModelLoadError):
    """The version's files disagree with its card: not fetched again until its objects change."""


@contextlib.contextmanager
def _model_lock(model_dir: Path) -> Iterator[None]:
    """Held while staging directories are made or swept, so a sweep never takes a new one."""
    fd = os.open(model_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sweep(model_dir: Path, version: str) -> None:
    """Remove what an interrupted fetch of `version` left: unlocked staging and replaced copies."""
    with os.scandir(model_dir) as scan:
        names = [e.name for _, e in zip(range(MAX_ENTRIES), scan, strict=False)]
    for name in names:
        if name.startswith(f".{version}.old-"):
            shutil.rmtree(model_dir / name, ignore_errors=True)
        elif name.startswith(f".{version}.partial-"):
            try:
                fd = os.open(model_dir / name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            finally:
                os.close(fd)
            shutil.rmtree(model_dir / name, ignore_errors=True)


def read_card(version_dir: Path) -> bytes | None:
    """The card of a cached version, or None when there is none to read (bounded, no links)."""
    try:
        fd = os.open(version_dir / CARD_FILE, _READ_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(MAX_CARD_BYTES + 1)
    return data if len(data) <= MAX_CARD_BYTES else None


def is_cached(version_dir: Path, card: bytes, sizes: dict[str, int]) -> bool:
    """Whether the cache holds this version as `card` describes it: the same card, and each graph
    a regular file of its size (hashes are checked again when the version loads)."""
    if read_card(version_dir) != card:
        return False
    for name, size in sizes.items():
        try:
            st = os.lstat(version_dir / name)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
    return True


def _sha256_of(path: Path, size: int) -> str | None:
    """The file's sha256 when it is a regular file of `size` bytes; None otherwise."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            return None
        digest = hashlib.sha256()
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Sink:
    """One file of a staged version, written as it arrives: hashed on the way, and never longer
    than `limit` bytes whatever the store sends. `label` names it in errors (where it came from)."""

    def __init__(self, path: Path, limit: int, label: str) -> None:
        self.path, self.limit, self.label, self.size = path, limit, label, 0
        self._digest = hashlib.sha256()
        self._fd = os.open(path, _WRITE_FLAGS, 0o644)

    def write(self, chunk: bytes | memoryview) -> None:
        if self.size + len(chunk) > self.limit:
            raise VersionRefused(f"{self.label}: more than the {self.limit} bytes the card says")
        self._digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(chunk)

    def finish(self, size: int, sha256: str) -> None:
        """Durable, and exactly the card's size and sha256, or refused."""
        os.fsync(self._fd)
        self.close()
        if self.size != size:
            raise VersionRefused(f"{self.label}: {self.size} bytes arrived, the card says {size}")
        digest = self._digest.hexdigest()
        if digest != sha256.lower():
            raise VersionRefused(
                f"{self.label}: sha256 {digest[:12]}... does not match the card's {sha256[:12]}..."
            )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Staging:
    """A version being assembled at `<cache>/<name>/.<version>.partial-*`, locked while it lives."""

    def __init__(self, model_dir: Path, version: str) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        self.model_dir, self.version = model_dir, version
        self._sinks: list[Sink] = []
        with _model_lock(model_dir):
            _sweep(model_dir, version)
            self.path = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def sink(self, filename: str, limit: int, label: str) -> Sink:
        sink = Sink(self.path / filename, limit, label)
        self._sinks.append(sink)
        return sink

    def write_card(self, raw: bytes) -> None:
        sink = self.sink(CARD_FILE, len(raw), CARD_FILE)
        sink.write(raw)
        sink.finish(len(raw), hashlib.sha256(raw).hexdigest())

    def link_cached(self, filename: str, size: int, sha256: str) -> bool:
        """Take `filename` from a cached version whose card gives it this sha256 and size (hashed
        again first), by a hard link, or a copy where links fail. False when none has it."""
        with os.scandir(self.model_dir) as scan:
            versions = [e.name for _, e in zip(range(MAX_ENTRIES), scan, strict=False)]
        for name in versions:
            if name.startswith("."):
                continue
            raw = read_card(self.model_dir / name)
            try:
                entry = json.loads(raw or b"{}").get("files", {}).get(filename, {})
                recorded = str(entry.get("sha256", "")).lower()
            except (ValueError, AttributeError, RecursionError):
                continue
            source = self.model_dir / name / filename
            if recorded == sha256.lower() and _sha256_of(source, size) == recorded:
                try:
                    os.link(source, self.path / filename, follow_symlinks=False)
                except OSError:
                    shutil.copyfile(source, self.path / filename, follow_symlinks=False)
                return True
        return False

    def publish(self, final: Path) -> None:
        """Rename the assembled version into place; one already there (a changed version, or the
        same one published by another process) is replaced."""
        os.fsync(self._fd)
        with _model_lock(self.model_dir):
            try:
                os.rename(self.path, final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                old = final.with_name(f".{self.version}.old-{secrets.token_hex(4)}")
                os.rename(final, old)
                os.rename(self.path, final)
                shutil.rmtree(old, ignore_errors=True)
        self.path = final
        fd = os.open(self.model_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._release()

    def discard(self) -> None:
        """Remove the staging directory unless it was published; releases the lock either way."""
        for sink in self._sinks:
            sink.close()
        if self._fd >= 0 and self.path.name.startswith("."):
            shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
