"""Python clients for vae-serve: `VaeClient` (blocking) and `AsyncVaeClient` (asyncio).

    from vae_serve.client import VaeClient
    with VaeClient("127.0.0.1:50051") as client:
        z, x = client.sample(16, seed=7, decode=True)

Arrays are numpy float32; every failure is a `VaeServeError` carrying the gRPC status code.
"""

from ._requests import ModelInfo
from ._transport import ClientOptions, VaeServeError
from .aio import AsyncVaeClient
from .sync import VaeClient

__all__ = ["AsyncVaeClient", "ClientOptions", "ModelInfo", "VaeClient", "VaeServeError"]
