"""The model repository on disk, Triton style: `<root>/<name>/<version>/` with two graphs and a card.

Nothing here runs a model: it finds a version, reads its card and proves the graphs on disk are
the ones the card describes (sha256), so a corrupt or half-copied version never reaches ORT.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_serve.errors import ModelLoadError, ModelNotFound

__all__ = ["GRAPH_FILES", "ModelVersion", "list_versions", "resolve"]

GRAPH_FILES = ("encoder.onnx", "decoder.onnx")
_REQUIRED_CARD_FIELDS = {"input_dim": int, "latent_dim": int, "image_shape": list, "files": dict}


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    card: dict[str, Any]

    def graph(self, filename: str) -> Path:
        return self.path / filename


def list_versions(root: Path, name: str) -> list[str]:
    """Numeric version directories, oldest first (hidden staging directories are skipped)."""
    model_dir = root / name
    if not model_dir.is_dir():
        return []
    return sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def _read_card(path: Path) -> dict[str, Any]:
    card_path = path / "model.json"
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{card_path}: missing (every version needs its model card)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{card_path}: unreadable model card ({exc})") from None
    if not isinstance(card, dict):
        raise ModelLoadError(f"{card_path}: model card must be a JSON object")
    for field, kind in _REQUIRED_CARD_FIELDS.items():
        if not isinstance(card.get(field), kind):
            raise ModelLoadError(f"{card_path}: field {field!r} missing or not a {kind.__name__}")
    return card


def _verify_files(path: Path, card: dict[str, Any]) -> None:
    for filename in GRAPH_FILES:
        file = path / filename
        expected = card["files"].get(filename, {}).get("sha256")
        if not expected:
            raise ModelLoadError(f"{path / 'model.json'}: no sha256 for {filename}")
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError as exc:
            raise ModelLoadError(f"{file}: cannot read ({exc.strerror})") from None
        if digest != expected:
            raise ModelLoadError(
                f"{file}: sha256 {digest[:12]}... does not match the card's {expected[:12]}..."
            )


def resolve(root: Path, name: str, version: str | None = None) -> ModelVersion:
    """The requested (or highest) version, its card read and its files verified."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} not found; pass --model-repository")
    versions = list_versions(root, name)
    if not versions:
        available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise ModelNotFound(f"no versions of model {name!r} in {root} (models there: {available or 'none'})")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise ModelNotFound(f"model {name!r} has no version {chosen!r} (versions: {', '.join(versions)})")
    path = root / name / chosen
    card = _read_card(path)
    _verify_files(path, card)
    return ModelVersion(name, chosen, path, card)
