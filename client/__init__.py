"""Python clients for vae-serve: `VaeClient` (blocking) and `AsyncVaeClient` (asyncio).

    from vae_serve.client import VaeClient
    with VaeClient("127.0.0.1:50051") as client:
        z, x = client.sample(16, seed=7, decode=True)

Arrays are numpy float32; every failure is a `VaeServeError` carrying the gRPC status code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._requests import ModelInfo
    from ._transport import ClientOptions, VaeServeError
    from .aio import AsyncVaeClient
    from .sync import VaeClient

__all__ = ["AsyncVaeClient", "ClientOptions", "ModelInfo", "VaeClient", "VaeServeError"]

# Imported on first use, so that `vae-client` (vae_serve.client.cli) can quieten grpc before
# anything imports it.
_HOMES = {
    "AsyncVaeClient": ".aio",
    "ClientOptions": "._transport",
    "ModelInfo": "._requests",
    "VaeClient": ".sync",
    "VaeServeError": "._transport",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
