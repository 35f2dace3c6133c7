"""vae-serve: a VAE served over gRPC from ONNX Runtime.

Installed, each top-level folder of the repository is a subpackage here: `vae_serve.training`
(training/), `vae_serve.server` (server/), `vae_serve.client` (client/). This package itself
holds only what every side shares: the generated stubs, the tensor codec, the IDX reader,
domain errors, where the bundled model repository is, and the CLIs' check for their extra.
"""

from importlib.util import find_spec
from pathlib import Path

__version__ = "0.3.0"
__all__ = ["DEFAULT_REPOSITORY", "__version__", "require_extra"]


def _bundled_repository() -> Path:
    installed = Path(__file__).resolve().parent / "models"  # a wheel puts models/ here
    return installed if installed.is_dir() else installed.parent.parent / "models"  # a source checkout


# The model repository that ships with the package; vae-serve serves it, vae-train writes to it.
DEFAULT_REPOSITORY = _bundled_repository()


def require_extra(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """Exit with one line naming the extra to install when any of `modules` is missing: `vae-serve`
    and `vae-train` are installed with the package, their dependencies only with their extra.
    `find_spec` on top-level names imports nothing (vae-serve's workers need prometheus_client
    unimported until they set up its multiprocess directory)."""
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"{command}: error: {', '.join(missing)} not installed; pip install 'vae-serve[{extra}]'"
        )
