"""The models requests name, resolved in one place.

Each model served has one entry: its name and its versions (each version with its own runners,
so its own batcher and statistics). Adding or removing a model is adding or removing its entry;
the front ends all resolve through `DataPlane.admit`, by name:
- the native API and the `/v1` routes by the model's repository name, or none for the default
  model (`--default-model`, or the only one served);
- the Open Inference Protocol by `<model>_encoder` and `<model>_decoder`, and the default model
  also by `vae_encoder` and `vae_decoder`, the names clients knew when one model was served.

A name from a request is only ever a key here: never a path, never a metric label, and quoted
and cut short in the error that refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vae_serve.errors import InvalidInput, ModelNotFound, NotReady, quote
from vae_serve.server.models.selection import ALIAS
from vae_serve.server.models.versions import ServedVersions

from .oip_models import OIP_GRAPHS, OipModel, oip_name

__all__ = ["ModelEntry", "ModelRegistry"]

_SHOWN = 8  # names an error lists, at most


@dataclass(eq=False)
class ModelEntry:
    """One model served: its name in the repository and its versions."""

    name: str
    versions: ServedVersions
    in_flight: int = 0  # calls admitted on it that have not ended (counted inside a call scope)

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def close(self) -> None:
        self.versions.close()


class ModelRegistry:
    def __init__(self, default: str | None = None, explicit: bool = False) -> None:
        """`default`: the model requests naming none get (None: the only model, while one is served).
        `explicit`: models come and go through model control, so none served is not "not ready
        yet" (UNAVAILABLE, retry) but "not loaded" (NOT_FOUND)."""
        self._default = default
        self._explicit = explicit
        self._entries: dict[str, ModelEntry] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    @property
    def entries(self) -> list[ModelEntry]:
        return [self._entries[name] for name in self.names]

    @property
    def default(self) -> str | None:
        """The model requests naming none resolve to, if any."""
        if self._default is not None:
            return self._default if self._default in self._entries else None
        return next(iter(self._entries)) if len(self._entries) == 1 else None

    def get(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def add(self, entry: ModelEntry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"model {entry.name} is served already")
        self._entries[entry.name] = entry

    def remove(self, name: str) -> ModelEntry:
        """Stop resolving `name`; what was admitted keeps the versions it got."""
        return self._entries.pop(name)

    def entry(self, name: str | None = None) -> ModelEntry:
        """The model `name` (None: the default). Raises NotReady before any model is served,
        ModelNotFound for a name not served, InvalidInput for none when there is no default."""
        if not self._entries and not self._explicit:
            raise NotReady("no model loaded yet; retry shortly")
        if name is None:
            name = self.default
            if name is None:
                raise InvalidInput(
                    f"no model named, and {len(self._entries)} are served ({self._listed(self.names)}): "
                    f"name one (no --default-model is set)"
                )
        found = self._entries.get(name)
        if found is None:
            raise ModelNotFound(f"no model {quote(name)}; models: {self._listed(self.names)}")
        return found

    def versions(self, name: str | None = None) -> ServedVersions:
        """The versions served of the model `name` (None: the default)."""
        return self.entry(name).versions

    def oip(self, name: str) -> tuple[ModelEntry, OipModel]:
        """The model and graph the OIP model `name` stands for; raises as `entry` does."""
        if not self._entries and not self._explicit:
            raise NotReady("no model loaded yet; retry shortly")
        model, _, graph = name.rpartition("_")
        found = OIP_GRAPHS.get(graph)
        if found is not None and model:
            if model in self._entries:
                return self._entries[model], found
            default = self.default
            if model == ALIAS and default is not None:
                return self._entries[default], found
        raise ModelNotFound(f"no model {quote(name)}; models: {self._listed(self.oip_names())}")

    def oip_names(self, model: str | None = None) -> list[str]:
        """Every OIP model name served (of the model `model` only, if given): the default's
        aliases first, then each model's own, encoder before decoder."""
        default = self.default
        names = []
        if default is not None and default != ALIAS and model in (None, default):
            names += [oip_name(ALIAS, graph) for graph in OIP_GRAPHS]
        for entry in self.entries:
            if model in (None, entry.name):
                names += [oip_name(entry.name, graph) for graph in OIP_GRAPHS]
        return names

    @staticmethod
    def _listed(names: list[str]) -> str:
        more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
        return ", ".join(names[:_SHOWN]) + more
