"""Which models a server serves at start, each with the version pinned, from the settings and the
repository: the `--model` names, or else every model directory there.

A model's name is a directory name as `settings.MODEL_NAME` has it; any other entry of the root
is skipped with its reason logged once (hidden entries silently), never the whole listing. What
cannot be served as configured (no models, a default or a pin naming a model not served, a bare
version with several models, a model named as the default's OIP aliases are) fails start-up in one
line, before anything loads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vae_serve.errors import ModelLoadError
from vae_serve.server.settings import MODEL_NAME, RepositorySettings, split_pin

from .repository import MAX_ENTRIES
from .source import local_root

__all__ = ["ALIAS", "choose_models", "list_models"]

log = logging.getLogger(__name__)

# The default model also answers as `vae_encoder` and `vae_decoder` over the Open Inference
# Protocol (protocol/registry.py), so a model of this name can only be the default.
ALIAS = "vae"

_reported: set[str] = set()


def list_models(root: Path) -> list[str]:
    """The model directories of the repository (and links to one), by name."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} not found; pass --model-repository")
    names = []
    try:
        with os.scandir(root) as scan:
            for count, entry in enumerate(scan):
                if count >= MAX_ENTRIES:
                    raise ModelLoadError(f"{root}: more than {MAX_ENTRIES} entries; clean it up")
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir and MODEL_NAME.fullmatch(entry.name):
                    names.append(entry.name)
                elif entry.name not in _reported:
                    if len(_reported) >= MAX_ENTRIES:
                        _reported.clear()
                    _reported.add(entry.name)
                    reason = "not a directory" if not is_dir else "not a model name (settings.MODEL_NAME)"
                    log.warning("%s/%s: not a model (%s)", root, repr(entry.name)[:60], reason)
    except OSError as exc:
        raise ModelLoadError(f"{root}: cannot list ({exc.strerror})") from None
    return sorted(names)


def choose_models(settings: RepositorySettings, listed: list[str] | None = None) -> dict[str, str | None]:
    """The models to serve, each with the version `--model-version` pins (None: the highest).
    When `--model` names none: `listed` (what an object store lists), or else the models in the
    directory versions are read from. Raises ModelLoadError saying what is wrong."""
    names = settings.model or (listed if listed is not None else list_models(local_root(settings)))
    if not names:
        raise ModelLoadError(f"no models in {settings.model_repository}; pass --model-repository")
    pins: dict[str, str | None] = dict.fromkeys(names)
    for pin in settings.model_version:
        name, version = split_pin(pin)
        if name is None:
            if len(names) > 1:
                raise ModelLoadError(
                    f"--model-version {pin}: {len(names)} models are served ({_shown(names)}); "
                    f"write name:{pin}"
                )
            name = names[0]
        if name not in pins:
            raise ModelLoadError(f"--model-version {pin}: {name} is not served ({_shown(names)})")
        pins[name] = version
    default = settings.default_model
    if default is not None and default not in pins:
        raise ModelLoadError(f"--default-model {default}: not served ({_shown(names)})")
    if default is None and len(names) == 1:
        default = names[0]
    if ALIAS in pins and default not in (None, ALIAS):
        raise ModelLoadError(
            f"model {ALIAS!r} would answer as {ALIAS}_encoder and {ALIAS}_decoder, which the default "
            f"model {default} answers as; serve {ALIAS!r} as the default (--default-model) or rename it"
        )
    return pins


def _shown(names: list[str], most: int = 8) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > most else ""
    return ", ".join(names[:most]) + more
