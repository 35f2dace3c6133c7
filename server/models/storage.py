"""Model versions in object storage (`s3://`, `gs://`, `az://`), fetched into a local cache that the
repository then reads as it reads any directory.

`StoreRepository(uri, cache_dir)` mirrors `<prefix>/<name>/<version>/` into
`<cache_dir>/<name>/<version>/`, so `repository.resolve(cache_dir, name, version)` loads it unchanged.
The rules, for a store that may be slow, failing or hostile:

- Listings are read a page at a time and stop at MAX_ENTRIES objects (`_store_io`). Only keys of
  the form `<name>/<version>/<file>`, with a model name and version as the repository has them
  and a file a version needs, are used; nothing the store names becomes a path in the cache.
- The card comes first (at most MAX_CARD_BYTES) and is validated with the repository's `Card`.
  The graphs' listed sizes must be the card's; each graph is streamed to disk, hashed on the way
  and cut off at its size, and must match the card's sha256 (`_cache.Sink`). A version whose
  files disagree with its card is refused and not fetched again until its objects change. A
  half-uploaded version (its card or a graph not there yet) is skipped until the next sync.
- A version is assembled in a hidden staging directory beside its place and renamed into place
  once every file is verified (`_cache.Staging`). One already cached is not fetched again: while
  its objects are unchanged nothing is asked; after a restart the card is compared; a new card
  whose graphs have cached hashes links them.
- Store calls are bounded in time and run off the event loop (`_store_io`); disk work runs in
  worker threads. Concurrent listings of one prefix, and fetches of one version, share one task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from vae_serve.errors import ModelLoadError
from vae_serve.server.settings import MODEL_NAME, STORE_SCHEMES

from ._cache import CARD_FILE, Staging, VersionRefused, is_cached
from ._store_io import BoundedStore, StoredObject, StoreUnavailable, first_line
from .repository import GRAPH_FILES, MAX_CARD_BYTES, MAX_ENTRIES, MAX_GRAPH_BYTES, Card

__all__ = ["SCHEMES", "StoreRepository", "StoreUnavailable", "VersionRefused", "is_store_uri"]

log = logging.getLogger(__name__)

SCHEMES = STORE_SCHEMES
_NEEDED = (CARD_FILE, *GRAPH_FILES)
_VERSION = re.compile(r"0|[1-9][0-9]{0,17}")  # the repository's rule for a version directory
T = TypeVar("T")

Files = dict[str, StoredObject]  # the files a version needs that the store has, by file name
Listing = dict[tuple[str, str], Files]  # by (model, version)
Fingerprint = tuple[tuple[str, int, str | None], ...]  # a version's objects: name, size, ETag


class _NotYet(ModelLoadError):
    """A version still being uploaded: looked at again on the next sync."""


def is_store_uri(text: str) -> bool:
    """Whether a `--model-repository` value names object storage rather than a local directory."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme in SCHEMES


class StoreRepository:
    """A model repository in object storage, read through a local cache at `root`. Its methods
    are coroutines for one event loop; none blocks it."""

    def __init__(self, uri: str, cache_dir: Path, *, timeout_s: float = 10.0, retries: int = 2) -> None:
        if not is_store_uri(uri):
            raise ModelLoadError(f"{uri!r}: not an object store URI ({', '.join(SCHEMES)}://bucket/prefix)")
        self._store = BoundedStore(uri, timeout_s=timeout_s, retries=retries)
        self.uri, self.root = self._store.uri, cache_dir
        self.call_timeout_s = self._store.call_timeout_s  # the longest any one store call may take
        self._inflight: dict[tuple[str, ...], asyncio.Task[Any]] = {}
        self._published: dict[tuple[str, str], Fingerprint] = {}
        self._refused: dict[tuple[str, str], tuple[Fingerprint, str]] = {}
        self._reported: set[tuple[str, ...]] = set()

    async def list_models(self) -> list[str]:
        """Names of the models under the prefix that have a version's file listed."""
        return sorted({model for model, _ in await self._listing("")})

    async def list_versions(self, model: str) -> list[str]:
        """The versions of `model` whose card and graphs are all in the store, oldest first.
        Nothing is downloaded."""
        _check_model(model)
        listing = await self._listing(f"{model}/")
        return sorted((v for (_, v), files in listing.items() if set(_NEEDED) <= files.keys()), key=int)

    async def fetch(self, model: str, version: str) -> Path:
        """One version in the cache, verified against its card; its directory there."""
        _check_model(model)
        if not _VERSION.fullmatch(version):
            raise ModelLoadError(f"{version[:40]!r}: not a version (ASCII digits, no leading zero)")
        listing = await self._listing(f"{model}/{version}/")
        return await self._fetch_once(model, version, listing)

    async def sync(self, model: str, newest: int = 1) -> list[Path]:
        """The newest `newest` valid versions of `model` in the cache, fetching what is missing
        (oldest first). Versions not ready or refused are skipped, each reason logged once;
        StoreUnavailable when the store itself fails."""
        _check_model(model)
        listing = await self._listing(f"{model}/")
        ready: list[Path] = []
        for _, version in sorted(listing, key=lambda key: int(key[1]), reverse=True):
            if len(ready) >= newest:
                break
            try:
                ready.append(await self._fetch_once(model, version, listing))
            except StoreUnavailable:
                raise
            except ModelLoadError as exc:
                self._report_once((model, version, str(exc)), f"{exc}; skipped")
        return ready[::-1]

    async def _listing(self, prefix: str) -> Listing:
        return await self._shared(("list", prefix), lambda: self._list(prefix))

    async def _fetch_once(self, model: str, version: str, listing: Listing) -> Path:
        return await self._shared(("fetch", model, version), lambda: self._fetch(model, version, listing))

    async def _shared(self, key: tuple[str, ...], start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """One task per key at a time; every caller awaits it, and one caller's cancellation
        leaves it running for the others."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(start())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        result: T = await asyncio.shield(task)
        return result

    def _forget(self, key: tuple[str, ...], task: asyncio.Task[Any]) -> None:
        """The next caller starts afresh; the outcome counts as seen, whoever awaited it."""
        del self._inflight[key]
        if not task.cancelled():
            task.exception()

    async def _list(self, prefix: str) -> Listing:
        found: Listing = {}
        async for page in self._store.list(prefix, MAX_ENTRIES):
            for obj in page:
                self._sort(obj, found)
        return found

    def _sort(self, obj: StoredObject, found: Listing) -> None:
        model, _, rest = obj.path.partition("/")
        version, _, filename = rest.partition("/")
        if filename not in _NEEDED:
            return  # other files of a version (notes, logs) are not the server's
        if not MODEL_NAME.fullmatch(model):
            reason = "not a model name"
        elif not _VERSION.fullmatch(version):
            reason = "not a version (ASCII digits, at most 18, no leading zero)"
        else:
            found.setdefault((model, version), {})[filename] = obj
            return
        shown = repr(obj.path)[:80]  # control characters escaped
        self._report_once(("key", obj.path), f"{self.uri}/{shown}: skipped ({reason})")

    async def _fetch(self, model: str, version: str, listing: Listing) -> Path:
        key, where = (model, version), f"{self.uri}/{model}/{version}"
        files = listing.get(key, {})
        fingerprint = tuple(sorted((name, o.size, o.e_tag) for name, o in files.items()))
        final = self.root / model / version
        if self._published.get(key) == fingerprint and await asyncio.to_thread(final.is_dir):
            return final
        refused = self._refused.get(key)
        if refused is not None and refused[0] == fingerprint:
            raise VersionRefused(refused[1])
        missing = [name for name in _NEEDED if name not in files]
        if missing:
            raise _NotYet(f"{where}: {', '.join(missing)} not in the store yet (half uploaded?)")
        try:
            raw, card = await self._card(where, files[CARD_FILE])
            for name in GRAPH_FILES:
                recorded, listed = card.files[name].bytes, files[name].size
                if listed > MAX_GRAPH_BYTES or (recorded is not None and recorded != listed):
                    raise VersionRefused(
                        f"{where}/{name}: {listed} bytes in the store, the card says {recorded}"
                    )
            sizes = {name: files[name].size for name in GRAPH_FILES}
            if not await asyncio.to_thread(is_cached, final, raw, sizes):
                await self._assemble(model, version, files, raw, card)
        except VersionRefused as exc:
            self._refused[key] = (fingerprint, str(exc))
            raise
        self._published[key] = fingerprint
        return final

    async def _card(self, where: str, obj: StoredObject) -> tuple[bytes, Card]:
        if obj.size > MAX_CARD_BYTES:
            raise VersionRefused(f"{where}/{CARD_FILE}: {obj.size} bytes, more than the 1 MiB a card may be")
        buffer = bytearray()

        def keep(chunk: bytes) -> None:
            if len(buffer) + len(chunk) > obj.size:
                raise VersionRefused(f"{where}/{CARD_FILE}: longer than the {obj.size} bytes listed")
            buffer.extend(chunk)

        await self._store.download(obj, keep, in_thread=False)
        raw = bytes(buffer)
        return raw, await asyncio.to_thread(_parse_card, raw, f"{where}/{CARD_FILE}")

    async def _assemble(self, model: str, version: str, files: Files, raw: bytes, card: Card) -> None:
        """Stage the card and graphs (cached ones linked, the rest downloaded), then publish."""
        where, model_dir = f"{self.uri}/{model}/{version}", self.root / model
        staging = await asyncio.to_thread(Staging, model_dir, version)
        try:
            await asyncio.to_thread(staging.write_card, raw)
            for name in GRAPH_FILES:
                size, sha256 = files[name].size, card.files[name].sha256
                if await asyncio.to_thread(staging.link_cached, name, size, sha256):
                    continue
                free = (await asyncio.to_thread(shutil.disk_usage, model_dir)).free
                if free < size:
                    raise ModelLoadError(f"{model_dir}: {free} bytes free, {where}/{name} needs {size}")
                sink = await asyncio.to_thread(staging.sink, name, size, f"{where}/{name}")
                await self._store.download(files[name], sink.write, in_thread=True)
                await asyncio.to_thread(sink.finish, size, sha256)
            await asyncio.to_thread(staging.publish, model_dir / version)
            log.info("%s: fetched into %s", where, model_dir / version)
        except OSError as exc:
            raise ModelLoadError(f"{model_dir}: cannot write the cache ({exc.strerror})") from None
        finally:
            await asyncio.to_thread(staging.discard)

    def _report_once(self, key: tuple[str, ...], message: str) -> None:
        if key not in self._reported:
            if len(self._reported) >= MAX_ENTRIES:
                self._reported.clear()
            self._reported.add(key)
            log.warning("%s", message)


def _check_model(model: str) -> None:
    if not MODEL_NAME.fullmatch(model):
        raise ModelLoadError(f"{model[:40]!r}: not a model name (letters, digits, '.', '_', '-')")


def _parse_card(raw: bytes, where: str) -> Card:
    """The card validated as the repository validates it (a megabyte of JSON: off the loop)."""
    try:
        return Card.model_validate(json.loads(raw.decode()))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValidationError is a ValueError
        raise VersionRefused(f"{where}: {_card_problem(exc)}") from None


def _card_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        return f"field {where!r}: {err['msg']}" if where else err["msg"].removeprefix("Value error, ")
    return f"unreadable model card ({first_line(exc)})"
