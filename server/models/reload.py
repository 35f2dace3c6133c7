"""Hot reload: watch the model repository and serve each new, valid version as it appears.

A version directory that appears (published atomically by `vae-train`, or copied by hand) is
verified (sha256 against its card), loaded into ONNX Runtime off the event loop, checked against
the version being served (same input and latent widths and image shape, so clients keep
working), warmed up, and only then made the latest; requests in flight finish on the version they
started on. A corrupt, incomplete or incompatible version is rejected with a logged reason and
`vae_serve_model_loads_total{result="rejected"}`, and the old one keeps serving. It is tried
again only if its files change.

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

__all__ = ["RepositoryWatcher"]

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


def _check_compatible(new: LoadedModel, served: LoadedModel) -> None:
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
        self._loads = metrics.model_loads
        self._tried: dict[str, tuple] = {}
        self.last_rejection = ""
        self.scans = 0  # scans completed: what tests and operators can wait on
        self._listing_error = ""
        self.wake = asyncio.Event()
        # Versions already there at start are not candidates (the start-up choice, perhaps a pin,
        # stands); only versions that appear or change later are.
        # This runs before the server listens (nothing to stall yet); scans later run off the loop.
        self._tried.update(_snapshot(settings.model_repository, settings.model))

    def _candidates(self, latest: int) -> list[str]:
        """Versions newer than `latest` whose files changed since they were last tried (in a thread)."""
        s, found = self.settings, []
        now = _snapshot(s.model_repository, s.model)
        for version, fingerprint in now.items():
            if int(version) > latest and self._tried.get(version) != fingerprint:
                self._tried[version] = fingerprint
                found.append(version)
        for gone in self._tried.keys() - now.keys():  # bounded by what is there
            del self._tried[gone]
        return found

    async def scan(self) -> list[str]:
        """Load what is new; returns the versions now served from this scan."""
        loaded: list[str] = []
        try:
            candidates = await asyncio.to_thread(self._candidates, int(self.dataplane.served.get().version))
        except ModelLoadError as exc:  # the model directory itself is unusable: say so once per change
            if str(exc) != self._listing_error:
                self._listing_error = str(exc)
                log.warning("repository scan: %s", exc)
            return loaded
        self._listing_error = ""
        for version in candidates:
            try:
                await self._load(version)
            except Exception as exc:  # whatever is wrong with a version must not stop the serving one
                self._loads.labels("rejected").inc()
                self.last_rejection = f"{version}: {exc}"
                log.warning(
                    "model version %s rejected, still serving %s: %s",
                    version,
                    self.dataplane.served.get().version,
                    exc,
                )
            else:
                self._loads.labels("loaded").inc()
                loaded.append(version)
        return loaded

    def _resolve_and_load(self, version: str) -> LoadedModel:
        """Card, hashes and ORT, all in the calling (worker) thread, the graphs read once."""
        s = self.settings
        return load_model(resolve(s.model_repository, s.model, version), s.device, s.intra_op_threads)

    async def _load(self, version: str) -> None:
        model = await asyncio.to_thread(self._resolve_and_load, version)
        _check_compatible(model, self.dataplane.served.get().model)
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
