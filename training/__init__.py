"""The offline trainer (`vae-train`) and `export_vae`, which publishes any VAE's encoder and decoder
as a model version the server serves:

    from vae_serve.training import export_vae
    export_vae(encoder, decoder, image_shape=[28, 28], model_repository="models", name="mine")

The contract those modules meet is in docs/training.md ("Bring your own VAE").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .export import ExportError, check_graphs, export_vae, write_card

__all__ = ["ExportError", "check_graphs", "export_vae", "write_card"]


def __getattr__(name: str) -> object:
    # Imported on first use: torch and ONNX come with the train extra, and `vae-train` checks for
    # them (require_extra) before anything imports them, to say in one line what to install.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(".export", __name__), name)
