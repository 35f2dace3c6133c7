"""vae-serve: a VAE served over gRPC from ONNX Runtime.

Installed, each top-level folder of the repository is a subpackage here: `vae_serve.training`
(training/), and the serving side's packages as they land. This package itself holds only what
every side shares.
"""

__version__ = "0.1.0"
