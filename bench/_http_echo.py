"""The HTTP floor: the same stack as vae-serve's API routes (a Starlette router on uvicorn with
httptools) answering every POST with a canned reply of the size vae-serve would send, without
parsing the request or running a model.

    python bench/_http_echo.py --port 8100 [--stack hypercorn] [--compute models/fashion-vae/1]

`--stack hypercorn` serves the same router from Hypercorn instead (bench/http_stack.py compares
them). `--compute MODEL_DIR` also runs its decoder on one row per request before answering, as a
server without batching must: the floor plus compute, the best a front end on this stack can do
without merging requests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np
import uvicorn
from _echo import graph_runs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from vae_serve.server.http.kserve_codec import encode_response


def canned(rows: int, input_dim: int) -> dict[str, tuple[bytes, int | None]]:
    x = {"x": np.full((rows, input_dim), 0.123456, np.float32)}
    return {
        "json": encode_response("vae_decoder", "1", None, x, {"x": False}),
        "binary": encode_response("vae_decoder", "1", None, x, {"x": True}),
    }


def app(input_dim: int, compute: Path | None = None) -> Router:
    replies = {rows: canned(rows, input_dim) for rows in (1, 256)}
    run = graph_runs(compute)["Decode"] if compute else None  # the gRPC echo's, decoder.onnx

    async def infer(request: Request) -> Response:
        body = await request.body()  # read, as the server must, but not parsed
        if run is not None:
            run()
        binary = "inference-header-content-length" in request.headers
        rows = 256 if len(body) > 16384 else 1
        reply, header = replies[rows]["binary" if binary else "json"]
        response = Response(reply, media_type="application/octet-stream" if binary else "application/json")
        if header is not None:
            response.headers["inference-header-content-length"] = str(header)
        return response

    return Router([Route("/v2/models/{model}/infer", infer, methods=["POST"])])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--input-dim", type=int, default=784)
    parser.add_argument("--stack", choices=["uvicorn", "hypercorn"], default="uvicorn")
    parser.add_argument("--compute", type=Path, help="a model version folder: run its decoder too")
    args = parser.parse_args()
    print(f"echo serving on {args.host}:{args.port}", file=sys.stderr, flush=True)
    if args.stack == "hypercorn":
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"{args.host}:{args.port}"]
        config.loglevel = "WARNING"
        config.keep_alive_max_requests = 1 << 30  # its default closes every 1000th: not what is measured
        asyncio.run(serve(app(args.input_dim, args.compute), config))
    else:
        uvicorn.run(
            app(args.input_dim, args.compute),
            host=args.host,
            port=args.port,
            http="httptools",
            log_level="warning",
            access_log=False,
        )
