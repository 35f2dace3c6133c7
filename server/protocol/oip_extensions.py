"""Triton's extensions that its tools call, added to the Open Inference Protocol service: model
configuration, statistics, and the repository index (read-only). `TritonExtensions` is the whole
service, the one object both OIP front ends hold (gRPC oip.py, HTTP kserve.py).

Each answer is built once, as the JSON Triton's HTTP endpoint returns (its protobuf JSON mapping,
field names as in the .proto, integers as numbers); the gRPC front end parses the same dict into
Triton's messages. Everything stated is what the server really does: the configuration comes
from the settings and the version served, the statistics from the metrics every run records
(statistics.py), the index from the versions served and the repository on disk. Each covers
every OIP model served: two per model, and the default model's aliases (registry.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from vae_serve import __version__
from vae_serve.errors import ModelLoadError, Unsupported
from vae_serve.server.models.graph import CUDA
from vae_serve.server.models.repository import list_versions
from vae_serve.server.models.selection import list_models
from vae_serve.server.models.source import local_root
from vae_serve.server.runners.statistics import GraphStatistics, graph_statistics

from . import oip_models
from .dataplane import DataPlane
from .model_control import ModelControl
from .oip_messages import ServerMetadata
from .oip_models import OIP_GRAPHS, OipTensor
from .oip_service import OipService

__all__ = ["EXTENSIONS", "TritonExtensions", "model_control_refused"]

# Triton's names for the extensions served here (ServerMetadata lists them, over gRPC and REST).
# `model_repository` too: its index is served, and load and unload are refused as Triton refuses
# them when model control is off (here the repository watcher loads versions).
EXTENSIONS = ("model_configuration", "model_repository", "statistics")
READY, UNAVAILABLE = "READY", "UNAVAILABLE"
OLDER = "not served: older than the versions kept (--keep-versions) or the one pinned at start"
NEWER = "not served: rejected, still loading, or beside the one pinned at start (the log says which)"
UNLOADED = "unloaded (explicit model control): load the model by its repository name to serve it"
NOT_LOADED = "not loaded (explicit model control): load the model by its repository name to serve it"

log = logging.getLogger(__name__)


def model_control_refused() -> Unsupported:
    """Load and unload are served only with --model-control-mode explicit. The message begins as
    Triton's does when model control is off, which tools built on Triton recognize."""
    return Unsupported(
        "explicit model load / unload is not allowed: the server runs with --model-control-mode "
        "poll or none (it loads new versions from its repository itself, polling or on SIGHUP); "
        "start it with --model-control-mode explicit to load and unload models through this API"
    )


class TritonExtensions(OipService):
    """The OIP service with Triton's extensions. `workers`: serving processes (each runs one
    instance of every graph). `registry`: where the statistics are read, with workers the one that
    merges every worker's files."""

    def __init__(
        self,
        dataplane: DataPlane,
        workers: int = 1,
        registry: CollectorRegistry | None = None,
        control: ModelControl | None = None,
    ) -> None:
        """`control`: load and unload (explicit model control); None refuses them."""
        super().__init__(dataplane)
        self.control = control
        self.repository = dataplane.repository
        self.workers = workers
        self.registry = registry if registry is not None else dataplane.metrics.registry
        # One read of the metrics files or the repository at a time, however many callers ask: a
        # flood of statistics or index requests waits here, not in the worker threads that
        # large bodies and pictures are parsed on (as /v1/stats does).
        self._reading = asyncio.Lock()

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata("vae-serve", __version__, EXTENSIONS)

    async def load(self, name: str, authorization: Sequence[object] = ()) -> None:
        """Load (or reload) a model by its repository name: with --model-control-mode explicit, by
        whom the gate admits (`authorization`: the call's values of that header, admin.py)."""
        if self.control is None:
            raise model_control_refused()
        await self.control.load(name, authorization)

    async def unload(self, name: str, authorization: Sequence[object] = ()) -> None:
        if self.control is None:
            raise model_control_refused()
        await self.control.unload(name, authorization)

    def config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's ModelConfig of one model, at the version given or the latest."""
        oip_model, served = self._resolve(name, version)
        plane = self.dataplane

        def tensor(t: OipTensor) -> dict[str, Any]:
            return {"name": t.name, "data_type": "TYPE_FP32", "dims": [t.width(served.model)]}

        graph = getattr(served.model, oip_model.graph)
        config: dict[str, Any] = {
            "name": name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "version_policy": {"latest": {"num_versions": self.repository.keep_versions}},
            # What one request may carry: larger than --max-batch-size runs alone, still accepted.
            "max_batch_size": plane.limits.max_request_rows,
            "input": [{**tensor(oip_model.input), "format": "FORMAT_NONE"}],
            "output": [tensor(t) for t in oip_model.outputs],
            "instance_group": [
                {
                    "name": f"{name}_0",
                    "kind": "KIND_GPU" if graph.provider == CUDA else "KIND_CPU",
                    "count": self.workers,
                }
            ],
        }
        batching = plane.batching
        if batching.max_batch_size > 1:
            config["dynamic_batching"] = {
                "preferred_batch_size": [batching.max_batch_size],
                "max_queue_delay_microseconds": batching.max_queue_delay_us,
            }
        return config

    async def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's ModelStatistics of one OIP model (or every one, name ""), per version served
        (or the one given), counted by every worker. The metrics are read off the event loop."""
        wanted: list[tuple[str, str, str, str]] = []  # OIP name, model, graph, version
        for oip_name in [name] if name else self.dataplane.models.oip_names():
            oip_model, served = self._resolve(oip_name, version)
            model = served.model.name
            versions = [served.version] if version else self.dataplane.models.versions(model).loaded
            wanted += [(oip_name, model, oip_model.graph, v) for v in versions]
        async with self._reading:
            found = await asyncio.to_thread(graph_statistics, self.registry)
        return [found.get((m, g, v), GraphStatistics()).triton(n, v) for n, m, g, v in wanted]

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every version of every model served, under each of its OIP names: READY when served,
        else UNAVAILABLE with why. The repository is listed off the event loop."""
        models = self.dataplane.models
        async with self._reading:
            on_disk = await asyncio.to_thread(self._on_disk, models.names)
            others = await asyncio.to_thread(self._not_loaded) if self.control is not None else []
        entries = []
        if not ready_only:  # explicit model control: what the repository has that is not loaded
            unloaded = self.control.unloaded if self.control is not None else set()
            for repository_model in others:
                reason = UNLOADED if repository_model in unloaded else NOT_LOADED
                entries += [
                    {
                        "name": oip_models.oip_name(repository_model, graph),
                        "version": "",
                        "state": UNAVAILABLE,
                        "reason": reason,
                    }
                    for graph in OIP_GRAPHS
                ]
        for model in models.entries:
            served = model.versions.loaded
            latest = int(served[-1]) if served else -1
            names = models.oip_names(model.name)
            for version in sorted(set(on_disk[model.name]) | set(served), key=int):
                if version in served:
                    state, reason = READY, ""
                elif int(version) < latest:
                    state, reason = UNAVAILABLE, OLDER
                else:
                    state, reason = UNAVAILABLE, NEWER
                if state == READY or not ready_only:
                    entries += [
                        {"name": name, "version": version, "state": state, "reason": reason} for name in names
                    ]
        return entries

    def _not_loaded(self) -> list[str]:
        """The repository's models not served (in a worker thread)."""
        try:
            found = list_models(local_root(self.repository))
        except ModelLoadError as exc:
            log.warning("repository index: %s", exc)
            return []
        served = set(self.dataplane.models.names)
        return [model for model in found if model not in served]

    def _on_disk(self, models: list[str]) -> dict[str, list[str]]:
        """Each model's versions in the repository now (in a worker thread)."""
        found = {}
        for model in models:
            try:
                found[model] = list_versions(local_root(self.repository), model)
            except ModelLoadError as exc:  # the directory is unusable now: what is served still is
                log.warning("repository index: %s", exc)
                found[model] = []
        return found
