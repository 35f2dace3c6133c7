"""The transport floor: a grpc.aio server on the VAEService paths that answers every call with a
canned response of the size vae-serve would send, without parsing the request or running a model.

    python bench/_echo.py --latent-dim 32 --input-dim 784 [--compute models/fashion-vae/1]

`--compute MODEL_DIR` also runs the method's graph (encoder.onnx, decoder.onnx) on one row per
call before answering, on the event loop as an unbatched server would: the floor plus compute,
what a lone request cannot go below on this stack.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

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


def graph_runs(model_dir: Path) -> dict[str, Callable[[], object]]:
    """Per method, one batch-1 run of its graph on one thread (as the server runs it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    runs = {}
    for method, graph in (("Encode", "encoder.onnx"), ("Decode", "decoder.onnx")):
        session = ort.InferenceSession(str(model_dir / graph), options, providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        feed = {first.name: np.full((1, first.shape[1]), 0.5, np.float32)}
        runs[method] = lambda session=session, feed=feed: session.run(None, feed)
    return runs


class Echo(grpc.GenericRpcHandler):
    """Answers by the number of rows the request declares (read from the size, not parsed)."""

    def __init__(self, input_dim: int, latent_dim: int, compute: Path | None = None) -> None:
        self.dims = {"Encode": input_dim, "Decode": latent_dim}
        self.replies = {rows: canned(rows, input_dim, latent_dim) for rows in (1, 256)}
        self.runs = graph_runs(compute) if compute else {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method.rsplit("/", 1)[-1]
        if method not in self.dims:
            return None
        small = self.replies[1][method]
        large = self.replies[256][method]
        threshold = 4 * self.dims[method] * 16
        run = self.runs.get(method)

        async def reply(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if run is not None:
                run()
            return large if len(request) > threshold else small

        return grpc.unary_unary_rpc_method_handler(reply)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--input-dim", type=int, default=784)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--compute", type=Path, help="a model version folder: run its graphs too")
    args = parser.parse_args()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([Echo(args.input_dim, args.latent_dim, args.compute)])
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    logging.warning("serving on 127.0.0.1:%d", port)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
