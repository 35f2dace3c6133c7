"""vae-serve: a VAE served over gRPC from ONNX Runtime.

Installed, each top-level folder of the repository is a subpackage here: `vae_serve.training`
(training/), `vae_serve.server` (server/), `vae_serve.client` (client/). This package itself
holds only what every side shares: the generated stubs, the tensor codec, the IDX reader,
domain errors, and where the bundled model repository is.
"""

from pathlib import Path

__version__ = "0.1.0"
__all__ = ["DEFAULT_REPOSITORY", "__version__"]


def _bundled_repository() -> Path:
    installed = Path(__file__).resolve().parent / "models"  # a wheel puts models/ here
    return installed if installed.is_dir() else installed.parent.parent / "models"  # a source checkout


# The model repository that ships with the package; vae-serve serves it, vae-train writes to it.
DEFAULT_REPOSITORY = _bundled_repository()
