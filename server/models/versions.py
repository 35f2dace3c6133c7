"""The model versions being served at once, Triton style: the highest answers requests that name
no version; the few before it stay loaded for requests that pin one, until retired.

A retired version is closed only after `--retire-after-s` (its own setting, not the drain's
grace), so requests that started on it finish on it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from vae_serve.errors import ModelNotFound, NotReady, quote
from vae_serve.server.runners.runner import Runner
from vae_serve.server.settings import RepositorySettings

from .model import LoadedModel

__all__ = ["ServedModel", "ServedVersions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version with the runners that feed its two graphs."""

    model: LoadedModel
    encoder: Runner
    decoder: Runner

    @property
    def version(self) -> str:
        return self.model.version

    def close(self) -> None:
        self.encoder.close()
        self.decoder.close()


class ServedVersions:
    def __init__(self, settings: RepositorySettings) -> None:
        self.keep = settings.keep_versions
        self.retire_after_s = settings.retire_after_s
        self._served: dict[str, ServedModel] = {}
        self.latest: ServedModel | None = None

    @property
    def loaded(self) -> list[str]:
        """The version strings served, oldest first."""
        return sorted(self._served, key=int)

    def add(self, served: ServedModel) -> None:
        """Serve `served`; it becomes the latest if its number is the highest."""
        if served.version in self._served:
            self._retire(self._served[served.version])
        self._served[served.version] = served
        self.latest = self._served[self.loaded[-1]]
        for old in self.loaded[: -self.keep]:
            self._retire(self._served.pop(old))

    def get(self, version: str | None = None) -> ServedModel:
        if self.latest is None:
            raise NotReady("no model loaded yet; retry shortly")
        if not version:
            return self.latest
        if version not in self._served:
            raise ModelNotFound(
                f"model version {quote(version)} is not loaded (loaded: {', '.join(self.loaded)})"
            )
        return self._served[version]

    def _retire(self, served: ServedModel) -> None:
        log.info("retiring version %s after %.1f s", served.version, self.retire_after_s)
        try:
            asyncio.get_running_loop().call_later(self.retire_after_s, served.close)
        except RuntimeError:  # no event loop yet (start-up, tests): nothing can be in flight
            served.close()

    def close(self) -> None:
        for served in self._served.values():
            served.close()
        self._served.clear()
        self.latest = None
