"""Hot reload: watch the model repository and serve each new, valid version as it appears.

A version directory that appears (published atomically by `vae-train`, or copied by hand) is
verified (sha256 against its card), loaded into ONNX Runtime off the event loop, checked against
the version being served (same input and latent widths and image shape, so clients keep
working), warmed up, and only then made the latest; requests in flight finish on the version they
started on. A corrupt, incomplete or incompatible version is rejected with a logged reason and
`vae_serve_model_loads_total{result="rejected"}`, and the old one keeps serving. It is tried
again only if its files change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from vae_serve.errors import ModelLoadError

from .dataplane import DataPlane
from .metrics import Metrics
from .model import LoadedModel, load_model
from .repository import list_versions, resolve
from .settings import Settings

__all__ = ["RepositoryWatcher"]

log = logging.getLogger(__name__)


def _fingerprint(path: Path) -> tuple:
    """What changes when a version's files do: names, sizes and modification times."""
    entries = sorted(path.iterdir()) if path.is_dir() else []
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries if p.is_file())


def _check_compatible(new: LoadedModel, served: LoadedModel) -> None:
    for field in ("input_dim", "latent_dim", "image_shape"):
        if getattr(new, field) != getattr(served, field):
            raise ModelLoadError(
                f"{new.version.path}: {field} {getattr(new, field)} differs from the served "
                f"version's {getattr(served, field)}; clients would break"
            )


class RepositoryWatcher:
    def __init__(self, settings: Settings, dataplane: DataPlane, metrics: Metrics) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self._loads = metrics.model_loads
        self._tried: dict[str, tuple] = {}
        self.last_rejection = ""
        self.wake = asyncio.Event()
        # Versions already there at start are not candidates (the start-up choice, perhaps a pin,
        # stands); only versions that appear or change later are.
        for version in list_versions(settings.model_repository, settings.model):
            self._tried[version] = _fingerprint(settings.model_repository / settings.model / version)

    def _candidates(self) -> list[str]:
        """Versions newer than the latest served whose files changed since they were last tried."""
        s, latest = self.settings, int(self.dataplane.versions.latest.version)
        found = []
        for version in list_versions(s.model_repository, s.model):
            fingerprint = _fingerprint(s.model_repository / s.model / version)
            if int(version) > latest and self._tried.get(version) != fingerprint:
                self._tried[version] = fingerprint
                found.append(version)
        return found

    async def scan(self) -> list[str]:
        """Load what is new; returns the versions now served from this scan."""
        loaded = []
        for version in self._candidates():
            try:
                await self._load(version)
            except Exception as exc:  # whatever is wrong with a version must not stop the serving one
                self._loads.labels("rejected").inc()
                self.last_rejection = f"{version}: {exc}"
                log.warning("model version %s rejected, still serving %s: %s",
                            version, self.dataplane.versions.latest.version, exc)  # fmt: skip
            else:
                self._loads.labels("loaded").inc()
                loaded.append(version)
        return loaded

    async def _load(self, version: str) -> None:
        s = self.settings
        found = resolve(s.model_repository, s.model, version)
        model = await asyncio.to_thread(load_model, found, s.device, s.intra_op_threads)
        _check_compatible(model, self.dataplane.versions.latest.model)
        self.dataplane.serve(model)
        log.info("now serving %s version %s (%s)", model.name, version, model.execution_provider)

    async def run_forever(self) -> None:
        """Scan every `repository_poll_s` seconds, or at once when `wake` is set (SIGHUP)."""
        while True:
            try:
                await self.scan()
            except Exception:  # a scan must never kill the watcher: log and keep watching
                log.exception("repository scan failed")
            self.wake.clear()
            if self.settings.repository_poll_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.repository_poll_s)
            else:
                await self.wake.wait()
