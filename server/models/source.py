"""Where a server reads its models: a local repository, or an object store mirrored into a cache.

Everything that loads, lists or indexes versions reads one directory laid out as a repository,
`local_root(settings)`: the repository itself, or the cache of the store's URI. With a store,
`ModelSource` brings into that cache what should be there (each model's newest `--keep-versions`
versions, and a pinned one) before the directory is read: at start, and before each scan of the
watcher. A store that fails or hangs (bounded by --store-timeout-s and --store-retries) never
stops what is served: the failure is logged once per change, and what is cached stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from vae_serve.server.settings import RepositorySettings, is_store_uri, split_pin

from .storage import StoreRepository, StoreUnavailable

__all__ = ["ModelSource", "StorePoller", "local_root"]

log = logging.getLogger(__name__)


def local_root(settings: RepositorySettings) -> Path:
    """The directory versions are loaded from: the repository, or the cache of its store. One
    cache directory per URI (scheme, bucket and a digest of the whole), so two stores sharing
    `--model-cache-dir` never mix, and nothing of a prefix becomes a path."""
    uri = settings.model_repository
    if not is_store_uri(uri):
        return Path(uri)
    scheme, _, rest = uri.partition("://")
    bucket = rest.partition("/")[0]
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return settings.model_cache_dir / f"{scheme}-{bucket}-{digest}"


class ModelSource:
    """The store behind a repository URI, if any (`store` is None for a local directory, and every
    method then does nothing). Its coroutines run on one event loop and never block it."""

    def __init__(self, settings: RepositorySettings) -> None:
        self.settings = settings
        self.root = local_root(settings)
        self.store: StoreRepository | None = None
        if is_store_uri(settings.model_repository):
            self.store = StoreRepository(
                settings.model_repository,
                self.root,
                timeout_s=settings.store_timeout_s,
                retries=settings.store_retries,
            )
        self._failures: dict[str, str] = {}  # by model: the store failure last logged
        self._cached: set[Path] = set()

    async def prepare(self) -> list[str] | None:
        """At start: sync every model to serve into the cache; returns the models the store
        lists when `--model` names none (None: list the local root). A store that cannot be read
        is logged, and the server starts from what the cache holds."""
        if self.store is None:
            return None
        names = list(self.settings.model)
        if not names:
            try:
                names = await self.store.list_models()
            except StoreUnavailable as exc:
                log.warning("%s; starting from what %s holds", exc, self.root)
                return None
        pins = dict(split_pin(pin) for pin in self.settings.model_version)
        if None in pins and len(names) == 1:
            pins[names[0]] = pins.pop(None)
        await self.sync(names, {name: v for name, v in pins.items() if name is not None})
        return names

    async def sync(self, models: list[str], pins: dict[str, str] | None = None) -> bool:
        """Each model's newest `--keep-versions` versions (and its pinned one) in the cache;
        returns whether a version was published that was not there before. A model the store
        cannot be read for is skipped, its failure logged once until it changes."""
        if self.store is None:
            return False
        fresh = False
        for model in models:
            try:
                paths = await self.store.sync(model, self.settings.keep_versions)
                pinned = (pins or {}).get(model)
                if pinned is not None:
                    paths.append(await self.store.fetch(model, pinned))
            except StoreUnavailable as exc:
                if self._failures.get(model) != str(exc):
                    self._failures[model] = str(exc)
                    log.warning("%s; still serving what is loaded", exc)
                continue
            if self._failures.pop(model, None) is not None:
                log.info("%s: %s can be read again", self.settings.model_repository, model)
            fresh |= not self._cached.issuperset(paths)
            self._cached.update(paths)
        return fresh


class StorePoller:
    """With `--workers`, the supervisor alone polls the store (every `--repository-poll-s`, or at
    once on `wake`), on a thread with its own event loop, and calls `on_new` when a version was
    published into the cache; the workers read that cache as a local repository, so the store
    sees one client however many workers serve."""

    def __init__(self, source: ModelSource, models: list[str], on_new: Callable[[], None]) -> None:
        self.source, self.models, self.on_new = source, models, on_new
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(self.source.settings.store_timeout_s)  # a call in flight is abandoned

    def _run(self) -> None:
        poll = self.source.settings.repository_poll_s
        loop = asyncio.new_event_loop()
        try:
            while not self._stopping:
                self._wake.wait(poll if poll > 0 else None)
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    if loop.run_until_complete(self.source.sync(self.models)):
                        self.on_new()
                except Exception:  # a sync must never end the polling: log and keep polling
                    log.exception("object store sync failed")
        finally:
            loop.close()
