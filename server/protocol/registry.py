"""The models requests name, resolved in one place.

Today one model is served: the native API's requests name none, and the Open Inference Protocol
names it by its two graphs (`vae_encoder`, `vae_decoder`). Serving several models changes this
registry, not the front ends, which all resolve through `DataPlane.admit`.
"""

from __future__ import annotations

from collections.abc import Iterable

from vae_serve.errors import ModelNotFound, quote
from vae_serve.server.models.versions import ServedVersions

__all__ = ["ModelRegistry"]


class ModelRegistry:
    def __init__(self, served: ServedVersions, names: Iterable[str]) -> None:
        """`served`: the one model's versions, which requests naming no model get too; `names`:
        what requests may call it."""
        self._default = served
        self._by_name = dict.fromkeys(names, served)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def versions(self, name: str | None = None) -> ServedVersions:
        """The versions served of the model `name` (None: the one a request naming none gets)."""
        if name is None:
            return self._default
        found = self._by_name.get(name)
        if found is None:
            raise ModelNotFound(f"no model {quote(name)}; models: {', '.join(self._by_name)}")
        return found
