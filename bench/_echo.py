"""The transport floor: a grpc.aio server on the VAEService paths that answers every call with a
canned response of the size vae-serve would send, without parsing the request or running a model.

    python bench/_echo.py --latent-dim 32 --input-dim 784
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc
import numpy as np

from vae_serve._proto.vae.v1 import vae_pb2
from vae_serve.tensor import to_tensor


def canned(rows: int, input_dim: int, latent_dim: int) -> dict[str, bytes]:
    m = to_tensor(np.zeros((rows, latent_dim)))
    return {
        "Encode": vae_pb2.EncodeResponse(mean=m, logvar=m).SerializeToString(),
        "Decode": vae_pb2.DecodeResponse(x=to_tensor(np.zeros((rows, input_dim)))).SerializeToString(),
    }


class Echo(grpc.GenericRpcHandler):
    """Answers by the number of rows the request declares (read from the size, not parsed)."""

    def __init__(self, input_dim: int, latent_dim: int) -> None:
        self.dims = {"Encode": input_dim, "Decode": latent_dim}
        self.replies = {rows: canned(rows, input_dim, latent_dim) for rows in (1, 256)}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method.rsplit("/", 1)[-1]
        if method not in self.dims:
            return None
        small = self.replies[1][method]
        large = self.replies[256][method]
        threshold = 4 * self.dims[method] * 16

        async def reply(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return large if len(request) > threshold else small

        return grpc.unary_unary_rpc_method_handler(reply)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--input-dim", type=int, default=784)
    parser.add_argument("--latent-dim", type=int, default=32)
    args = parser.parse_args()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([Echo(args.input_dim, args.latent_dim)])
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    logging.warning("serving on 127.0.0.1:%d", port)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
