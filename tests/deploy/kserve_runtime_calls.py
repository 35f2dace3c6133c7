"""The KServe SDK against a server started as the vae-serve ServingRuntime would start it, in its
own process: the SDK's protocol stubs and the project's register the same `inference.*` messages,
which one process cannot hold twice (tests/server/http/kserve_calls.py has the full story).

Usage: kserve_runtime_calls.py HTTP-URL GRPC-TARGET Z-JSON; prints a JSON result.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

MODELS = ("vae_encoder", "vae_decoder")


def decode_request(z: np.ndarray, request_id: str) -> InferRequest:
    tensor = InferInput("z", list(z.shape), "FP32")
    tensor.set_data_from_numpy(z, binary_data=True)
    return InferRequest(model_name="vae_decoder", infer_inputs=[tensor], request_id=request_id)


async def calls(url: str, target: str, z: np.ndarray) -> dict:
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
        rest_health = [await client.is_server_live(url), await client.is_server_ready(url)]
        rest_health += [await client.is_model_ready(url, m) for m in MODELS]
        response = await client.infer(url, decode_request(z, "rest-1"), model_name="vae_decoder")
        rest = {"id": response.id, "x": response.outputs[0].as_numpy().tolist()}
    async with InferenceGRPCClient(target, timeout=30, retries=0) as client:
        grpc_health = [await client.is_server_live(), await client.is_server_ready()]
        grpc_health += [await client.is_model_ready(m) for m in MODELS]
        response = await client.infer(decode_request(z, "grpc-1"))
        grpc = {"id": response.id, "x": response.outputs[0].as_numpy().tolist()}
    return {"health": {"rest": rest_health, "grpc": grpc_health}, "rest": rest, "grpc": grpc}


if __name__ == "__main__":
    z = np.asarray(json.loads(sys.argv[3]), dtype=np.float32)
    print(json.dumps(asyncio.run(calls(sys.argv[1], sys.argv[2], z))))
