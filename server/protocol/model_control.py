"""Model control as Triton has it (`--model-control-mode explicit`): load and unload a model by its
name in the repository, over gRPC (`RepositoryModelLoad` / `RepositoryModelUnload`) and REST
(`POST /v2/repository/models/{name}/load|unload`).

The rules:
- a name is checked against the settings' model-name rule before anything else, so it is only
  ever a directory name under the repository root, never a path;
- a load fetches (from an object store), verifies, loads and warms the model's newest version
  off the event loop, and only then serves it; a failed load changes nothing served and says why
  in one line; loads of one model at once share one load; a new model beyond
  `--max-loaded-models` is refused;
- an unload stops admission at once (requests naming the model are refused from then on), waits
  for the calls admitted on it for up to `--drain-grace-s`, then closes its sessions and runners;
- both pass the gate first (admin.py: an admin token, or loopback only), before the name is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from vae_serve.errors import InvalidInput, LoadFailed, ModelLoadError, ModelNotFound, TooManyModels, quote
from vae_serve.server.models.model import LoadedModel
from vae_serve.server.models.reload import RepositoryWatcher, check_compatible
from vae_serve.server.models.repository import list_versions
from vae_serve.server.settings import MODEL_NAME

from .admin import ControlGate
from .dataplane import DataPlane
from .registry import ModelEntry

__all__ = ["ModelControl"]

log = logging.getLogger(__name__)

_DRAIN_POLL_S = 0.01


class ModelControl:
    def __init__(
        self, dataplane: DataPlane, watcher: RepositoryWatcher, drain_grace_s: float, gate: ControlGate
    ) -> None:
        """`gate`: who may load and unload."""
        self.dataplane = dataplane
        self.gate = gate
        self.watcher = watcher
        self.drain_grace_s = drain_grace_s
        self.max_models = dataplane.repository.max_loaded_models
        self.unloaded: set[str] = set()  # models unloaded through the API, for the index
        self.loads = 0  # versions loaded into ONNX Runtime through the API
        self._lock = asyncio.Lock()  # one change of the set served at a time
        self._shared: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def load(self, name: str, authorization: Sequence[object] = ()) -> None:
        """`authorization`: the call's authorization header or metadata values, for the gate."""
        await self._once("load", await self._admitted("load", name, authorization), self._load)

    async def unload(self, name: str, authorization: Sequence[object] = ()) -> None:
        await self._once("unload", await self._admitted("unload", name, authorization), self._unload)

    async def _admitted(self, op: str, name: str, authorization: Sequence[object]) -> str:
        who = await self.gate.admit(authorization)
        name = _checked(name)
        log.info("%s of %s asked by %s", op, name, who)
        return name

    async def _once(self, op: str, name: str, start: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        """Callers of the same operation on the same model at once share one task; a caller that
        goes away leaves it running for the others."""
        key = (op, name)
        task = self._shared.get(key)
        if task is None:
            task = asyncio.create_task(start(name), name=f"model-{op}-{name}")
            self._shared[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        await asyncio.shield(task)

    def _forget(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        del self._shared[key]
        if not task.cancelled():
            task.exception()  # seen by whoever awaited it

    async def _load(self, name: str) -> None:
        async with self._lock:
            models = self.dataplane.models
            entry = models.get(name)
            if entry is None and len(models.names) >= self.max_models:
                raise TooManyModels(
                    f"{len(models.names)} models are loaded, the most --max-loaded-models allows; "
                    f"unload one first"
                )
            await self.watcher.source.sync([name])  # from an object store: into the cache first
            model = await asyncio.to_thread(self._read, name, entry)
            if model is None:
                return  # its newest version is served already
            try:
                if entry is not None and entry.versions.latest is not None:
                    check_compatible(model, entry.versions.latest.model)
                self.dataplane.serve(model)
            except ModelLoadError as exc:
                raise LoadFailed(_one_line(name, exc)) from None
            self.watcher.watch(name)
            self.unloaded.discard(name)
            log.info("loaded %s version %s (%s)", name, model.version, model.execution_provider)

    def _read(self, name: str, entry: ModelEntry | None) -> LoadedModel | None:
        """The model's newest version, verified, loaded and warmed (in a worker thread); None
        when that version is served already."""
        try:
            versions = list_versions(self.watcher.root, name)
        except ModelLoadError as exc:
            raise LoadFailed(_one_line(name, exc)) from None
        if not versions:
            raise ModelNotFound(f"no model {quote(name)} in the repository")
        if entry is not None and versions[-1] in entry.versions.loaded:
            return None
        self.loads += 1
        try:
            return self.watcher.load_version(name, versions[-1])
        except ModelLoadError as exc:
            raise LoadFailed(_one_line(name, exc)) from None

    async def _unload(self, name: str) -> None:
        async with self._lock:
            entry = self.dataplane.models.get(name)
            if entry is None:
                return  # not served: nothing to do, as Triton answers
            self.dataplane.models.remove(name)  # admission stops here
            self.watcher.unwatch(name)
            self.unloaded.add(name)
        deadline = time.monotonic() + self.drain_grace_s
        while entry.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        if entry.in_flight > 0:
            log.warning(
                "unloading %s with %d calls still in flight after the drain grace", name, entry.in_flight
            )
        entry.close()
        log.info("unloaded %s", name)


def _checked(name: str) -> str:
    """The name as a request gave it, if it is a model's name; never a path (no '/', no '..')."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidInput(
            f"{quote(name)}: not a model name (letters, digits, '.', '_', '-', starting with a "
            f"letter or digit)"
        )
    return name


def _one_line(name: str, exc: Exception) -> str:
    return f"model {name} not loaded, what was served still is: {' '.join(str(exc).split())}"
