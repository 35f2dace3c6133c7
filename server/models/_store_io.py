"""Calls to an object store, each bounded: in time (a timeout over the library's own retries with
backoff), in size (a listing stops at a cap, a download at the bytes expected), and never on the
event loop (obstore's async API runs them on its own threads; a caller's writer may run in a
worker thread). The credentials and endpoint come from the library's reading of the environment
(`AWS_*`, `GOOGLE_*`, `AZURE_*`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import obstore
from obstore.exceptions import BaseError, PreconditionError
from obstore.store import from_url

from vae_serve.errors import ModelLoadError

from .repository import MAX_GRAPH_BYTES

__all__ = ["BoundedStore", "ObjectChanged", "StoreUnavailable", "StoredObject", "first_line"]

_CHUNK = 1 << 20
_PAGE = 1000  # S3's largest listing page
# A whole download slower than this on average (beyond one call's bound) is treated as hung.
_MIN_BYTES_PER_S = 1 << 20
_BACKOFF_MAX_S = 4.0
_DURATION = re.compile(r" in [0-9.]+(?:µs|ms|s|ns)\b")
T = TypeVar("T")


class StoreUnavailable(ModelLoadError):
    """The store did not answer in time, or refused the request (network, credentials): nothing
    about the version is known; try again later."""


class ObjectChanged(ModelLoadError):
    """An object changed or vanished between its listing and its download: look again later."""


@dataclass(frozen=True)
class StoredObject:
    path: str  # relative to the store's prefix
    size: int
    e_tag: str | None


class BoundedStore:
    """The store at `uri`, every call bounded by `call_timeout_s`: `timeout_s` for each try
    (connecting, or waiting for the next byte), `retries` more tries with backoff."""

    def __init__(self, uri: str, *, timeout_s: float, retries: int) -> None:
        if timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s must be positive and retries at least 0")
        self.uri = uri.rstrip("/")
        self.call_timeout_s = timeout_s * (retries + 1) + _BACKOFF_MAX_S * retries
        per_try = timedelta(seconds=timeout_s)
        try:
            self._store = from_url(
                uri,
                client_options={
                    "connect_timeout": per_try,
                    "read_timeout": per_try,  # no byte for this long: the try fails (and is retried)
                    "timeout": timedelta(seconds=self._budget(MAX_GRAPH_BYTES)),
                    "allow_http": True,  # an http:// endpoint is chosen on purpose (MinIO, Ceph in a cluster)
                },
                retry_config={
                    "max_retries": retries,
                    "retry_timeout": timedelta(seconds=self.call_timeout_s),
                    "backoff": {
                        "init_backoff": timedelta(seconds=0.25),
                        "max_backoff": timedelta(seconds=_BACKOFF_MAX_S),
                        "base": 2,
                    },
                },
            )
        except (BaseError, ValueError) as exc:
            raise ModelLoadError(f"{uri}: {first_line(exc)}") from None

    def _budget(self, size: int) -> float:
        return self.call_timeout_s + size / _MIN_BYTES_PER_S

    async def _call(self, awaitable: Awaitable[T], what: str) -> T:
        """The library's call, bounded; its failures as StoreUnavailable, except a missing or
        changed object (FileNotFoundError, PreconditionError), which the caller judges."""
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await awaitable
        except TimeoutError:
            raise StoreUnavailable(f"{what}: no answer within {self.call_timeout_s:g} s") from None
        except (FileNotFoundError, PreconditionError):
            raise
        except (BaseError, OSError, ValueError) as exc:
            raise StoreUnavailable(f"{what}: {first_line(exc)}") from None

    async def list(self, prefix: str, limit: int) -> AsyncIterator[list[StoredObject]]:
        """The objects under `prefix` ("" for all), a page at a time; ModelLoadError past `limit`
        objects, so no listing costs more than limit / 1000 requests."""
        where = f"{self.uri}/{prefix}"
        stream = obstore.list(self._store, prefix or None, chunk_size=_PAGE)
        count = 0
        while True:
            try:
                page = await self._call(anext(stream), f"listing {where}")
            except StopAsyncIteration:
                return
            except FileNotFoundError:
                raise StoreUnavailable(f"{where}: no such bucket or container") from None
            count += len(page)
            if count > limit:
                raise ModelLoadError(f"{where}: more than {limit} objects; clean it up")
            yield [StoredObject(meta["path"], meta["size"], meta["e_tag"]) for meta in page]

    async def download(self, obj: StoredObject, write: Callable[[bytes], None], *, in_thread: bool) -> None:
        """Stream `obj` into `write` (in a worker thread if `in_thread`), a chunk at a time. The
        listed ETag is required, so a replaced object is not mixed in; each chunk is bounded by
        the call timeout, the whole by its size. `write` caps what it takes."""
        what = f"{self.uri}/{obj.path}"
        options: obstore.GetOptions = {"if_match": obj.e_tag} if obj.e_tag else {}
        budget = self._budget(obj.size)
        stream = None
        try:
            async with asyncio.timeout(budget):
                result = await self._call(obstore.get_async(self._store, obj.path, options=options), what)
                stream = result.stream(min_chunk_size=_CHUNK)
                del result
                while True:
                    try:
                        chunk = await self._call(anext(stream), what)
                    except StopAsyncIteration:
                        return
                    if in_thread:
                        await asyncio.to_thread(write, chunk)
                    else:
                        write(chunk)
        except TimeoutError:
            raise StoreUnavailable(f"{what}: not downloaded within {budget:g} s") from None
        except (FileNotFoundError, PreconditionError):
            raise ObjectChanged(f"{what}: changed or removed while it was fetched") from None
        finally:
            stream = None  # dropping the stream closes its connection, also when it is abandoned


def first_line(exc: BaseException) -> str:
    """The error's first line, fit for a log: a store's message may quote a hostile key or body."""
    text = str(exc).strip()
    line = (text.splitlines()[0] if text else type(exc).__name__)[:400]
    # The library gives each request's duration; without it a recurring failure reads the same
    # each time, so a caller can log it once.
    line = _DURATION.sub("", line)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
