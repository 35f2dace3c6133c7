"""Hot reload: watch the model repository and serve each new, valid version of every model served
as it appears.

A version directory that appears (published atomically by `vae-train`, or copied by hand) is
verified (sha256 against its card), loaded into ONNX Runtime off the event loop, checked against
the version of that model being served (same input and latent widths and image shape, so clients
keep working), warmed up, and only then made the model's latest; requests in flight finish on the
version they started on. A corrupt, incomplete or incompatible version is rejected with a logged
reason and `vae_serve_model_loads_total{result="rejected"}`, and the model's old one keeps
serving. It is tried again only if its files change. The models watched are the ones served
(`watch`): a new model directory is not served by appearing. From an object store, each scan
first syncs the models' newest versions into the cache (source.py), which is the directory read.

Every touch of the repository (listing, fingerprints, the card, hashing, ORT) runs in a worker
thread, one `asyncio.to_thread` per scan and one per candidate: a huge graph or a FIFO where a
card belongs must never stall the event loop that answers calls and health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from pathlib import Path

from vae_serve.errors import ModelLoadError
from vae_serve.server.protocol.dataplane import DataPlane
from vae_serve.server.settings import RepositorySettings
from vae_serve.server.telemetry.metrics import Metrics

from .model import LoadedModel, load_model
from .repository import MAX_ENTRIES, list_versions, resolve
from .source import ModelSource

__all__ = ["RepositoryWatcher", "check_compatible"]

log = logging.getLogger(__name__)


def _fingerprint(path: Path) -> tuple:
    """What changes when a version's files do: names, types, sizes and modification times (of the
    entries themselves, links not followed; nothing is opened, so a FIFO cannot block it)."""
    try:
        with os.scandir(path) as scan:
            entries = list(itertools.islice(scan, MAX_ENTRIES + 1))
    except OSError:
        return ()
    found = []
    for entry in sorted(entries, key=lambda e: e.name):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        found.append((entry.name, st.st_mode, st.st_size, st.st_mtime_ns))
    return tuple(found)


def _snapshot(root: Path, name: str) -> dict[str, tuple]:
    """Every version there now, with its fingerprint."""
    return {version: _fingerprint(root / name / version) for version in list_versions(root, name)}


def check_compatible(new: LoadedModel, served: LoadedModel) -> None:
    for field in ("input_dim", "latent_dim", "image_shape"):
        if getattr(new, field) != getattr(served, field):
            raise ModelLoadError(
                f"{new.files.path}: {field} {getattr(new, field)} differs from the served "
                f"version's {getattr(served, field)}; clients would break"
            )


class RepositoryWatcher:
    def __init__(self, settings: RepositorySettings, dataplane: DataPlane, metrics: Metrics) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self.source = ModelSource(settings)
        self.root = self.source.root  # the repository, or its store's cache
        self._loads = metrics.model_loads
        self._tried: dict[str, dict[str, tuple]] = {}  # by model watched: version -> fingerprint tried
        self.last_rejection = ""
        self.scans = 0  # scans completed: what tests and operators can wait on
        self._listing_errors: dict[str, str] = {}
        self.wake = asyncio.Event()

    def watch(self, model: str) -> None:
        """Look for new versions of `model` from now on. Call it before the model loads: versions
        there now are not candidates (the start-up choice, perhaps a pin, stands); only versions
        that appear or change later are. (Before the server listens, nothing can stall yet; scans
        run off the loop.)"""
        if model not in self._tried:
            self._tried[model] = _snapshot(self.root, model)

    def unwatch(self, model: str) -> None:
        self._tried.pop(model, None)
        self._listing_errors.pop(model, None)

    def _candidates(self, latest: dict[str, int]) -> dict[str, list[str] | ModelLoadError]:
        """Per model, its versions newer than its `latest` whose files changed since they were last
        tried, or why its directory cannot be listed (in a thread)."""
        found: dict[str, list[str] | ModelLoadError] = {}
        for model, newest in latest.items():
            tried = self._tried.setdefault(model, {})
            try:
                now = _snapshot(self.root, model)
            except ModelLoadError as exc:
                found[model] = exc
                continue
            fresh = []
            for version, fingerprint in now.items():
                if int(version) > newest and tried.get(version) != fingerprint:
                    tried[version] = fingerprint
                    fresh.append(version)
            for gone in tried.keys() - now.keys():  # bounded by what is there
                del tried[gone]
            found[model] = fresh
        return found

    async def scan(self) -> list[tuple[str, str]]:
        """Load what is new of every model served; returns the (model, version) now served from
        this scan."""
        # Every model served; one served without `watch` (by a tool, a test) is watched from now.
        latest = {
            entry.name: int(entry.versions.latest.version)
            for entry in self.dataplane.models.entries
            if entry.versions.latest is not None
        }
        await self.source.sync(list(latest))  # a store's new versions into the cache first
        candidates = await asyncio.to_thread(self._candidates, latest)
        loaded: list[tuple[str, str]] = []
        for model, versions in candidates.items():
            if isinstance(versions, ModelLoadError):  # its directory is unusable: say so once per change
                if str(versions) != self._listing_errors.get(model):
                    self._listing_errors[model] = str(versions)
                    log.warning("repository scan: %s", versions)
                continue
            self._listing_errors.pop(model, None)
            for version in versions:
                if await self._try(model, version):
                    loaded.append((model, version))
        return loaded

    async def _try(self, model: str, version: str) -> bool:
        """Load one candidate; whatever is wrong with it must not stop the version serving."""
        try:
            await self._load(model, version)
        except Exception as exc:
            self._loads.labels("rejected").inc()
            self.last_rejection = f"{model}/{version}: {exc}"
            entry = self.dataplane.models.get(model)
            serving = None if entry is None else entry.versions.latest
            log.warning(
                "model %s version %s rejected, still serving %s: %s",
                model,
                version,
                "none" if serving is None else serving.version,
                exc,
            )
            return False
        self._loads.labels("loaded").inc()
        return True

    def load_version(self, model: str, version: str) -> LoadedModel:
        """Card, hashes and ORT, all in the calling (worker) thread, the graphs read once."""
        s = self.settings
        return load_model(resolve(self.root, model, version), s.device, s.intra_op_threads)

    async def _load(self, name: str, version: str) -> None:
        model = await asyncio.to_thread(self.load_version, name, version)
        check_compatible(model, self.dataplane.models.versions(name).get().model)
        self.dataplane.serve(model)
        log.info("now serving %s version %s (%s)", model.name, version, model.execution_provider)

    async def run_forever(self) -> None:
        """Scan every `repository_poll_s` seconds, or at once when `wake` is set (SIGHUP)."""
        while True:
            try:
                await self.scan()
            except Exception:  # a scan must never kill the watcher: log and keep watching
                log.exception("repository scan failed")
            self.scans += 1
            self.wake.clear()
            poll = self.settings.repository_poll_s
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that comes
            # as the wait ends, so a stop during a SIGHUP flood never ended the watcher.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll if poll > 0 else None):
                    await self.wake.wait()
