"""The KServe SDK against a server, in its own process: its protocol stubs and ours (and
tritonclient's) register the same `inference.*` messages, which one process cannot hold twice.

Usage: kserve_calls.py HTTP-URL GRPC-TARGET SCENARIO JSON-ARGS; prints a JSON result.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.rest import v2_datamodels as v2
from pydantic import BaseModel, ValidationError

MODELS = ("vae_encoder", "vae_decoder")


def conforms(model: type[BaseModel], reply: httpx.Response) -> dict[str, Any]:
    """The reply's JSON, held strictly to the SDK's model of it: its types, its required fields,
    and no field the model does not have. Returns what did not conform, or the body."""
    try:
        model.model_validate_json(reply.content, strict=True)
    except ValidationError as exc:
        return {"status": reply.status_code, "invalid": str(exc)}
    body = reply.json()
    extra = set(body) - set(model.model_fields)
    return {"status": reply.status_code, "extra": sorted(extra)} if extra else body


def error_body(reply: httpx.Response) -> dict[str, Any]:
    """An error's status and body: the protocol's error object is {"error": $string}."""
    body = reply.json()
    ok = reply.headers["content-type"] == "application/json" and set(body) == {"error"}
    return {"status": reply.status_code, "error": body.get("error"), "is_error_object": ok}


async def rest(url: str, args: dict) -> dict:
    """The SDK's REST client, then every reply held to its models; `pinned`: at args["version"]."""
    z = np.asarray(args["z"], dtype=np.float32)
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
        health = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            **{m: await client.is_model_ready(url, m) for m in MODELS},
        }
        inferred = {}
        for binary in (True, False):
            tensor = InferInput("z", list(z.shape), "FP32")
            tensor.set_data_from_numpy(z, binary_data=binary)
            request = InferRequest(model_name="vae_decoder", infer_inputs=[tensor], request_id="kserve-7")
            response = await client.infer(url, request, model_name="vae_decoder")
            inferred["binary" if binary else "json"] = {
                "id": response.id,
                "model_name": response.model_name,
                "model_version": response.model_version,
                "x": response.outputs[0].as_numpy().tolist(),
            }
        try:
            await client.infer(url, request, model_name="vae_other")
            refused = None
        except httpx.HTTPStatusError as exc:
            refused = str(exc)
    tensor = {"name": "z", "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()}
    body = {"id": "a1", "inputs": [tensor]}
    pinned = args["version"]
    replies = {  # name: (the SDK's model of the reply, its path, its body to POST)
        "live": (v2.ServerLiveResponse, "/v2/health/live", None),
        "ready": (v2.ServerReadyResponse, "/v2/health/ready", None),
        "metadata": (v2.ServerMetadataResponse, "/v2", None),
        **{f"{m} ready": (v2.ModelReadyResponse, f"/v2/models/{m}/ready", None) for m in MODELS},
        **{f"{m} metadata": (v2.ModelMetadataResponse, f"/v2/models/{m}", None) for m in MODELS},
        "pinned ready": (v2.ModelReadyResponse, f"/v2/models/vae_decoder/versions/{pinned}/ready", None),
        "pinned metadata": (v2.ModelMetadataResponse, f"/v2/models/vae_decoder/versions/{pinned}", None),
        "infer": (v2.InferenceResponse, "/v2/models/vae_decoder/infer", body),
    }
    refusals = {  # name: (path, body to POST)
        "unknown model ready": ("/v2/models/vae_other/ready", None),
        "unknown model metadata": ("/v2/models/vae_other", None),
        "unknown version metadata": ("/v2/models/vae_decoder/versions/9", None),
        "unknown model infer": ("/v2/models/vae_other/infer", body),
        "bad infer": ("/v2/models/vae_decoder/infer", {"inputs": []}),
    }
    with httpx.Client(base_url=url, timeout=30) as http:

        def call(path: str, body: dict | None) -> httpx.Response:
            return http.get(path) if body is None else http.post(path, json=body)

        bodies = {name: conforms(model, call(path, body)) for name, (model, path, body) in replies.items()}
        errors = {name: error_body(call(path, body)) for name, (path, body) in refusals.items()}
    return {"health": health, "inferred": inferred, "refused": refused, "bodies": bodies, "errors": errors}


async def over_grpc(target: str, args: dict) -> dict:
    z = np.asarray(args["z"], dtype=np.float32)
    async with InferenceGRPCClient(target, timeout=30, retries=0) as client:
        health = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            **{m: await client.is_model_ready(m) for m in MODELS},
        }
        tensor = InferInput("z", list(z.shape), "FP32")
        tensor.set_data_from_numpy(z, binary_data=True)
        request = InferRequest(model_name="vae_decoder", infer_inputs=[tensor], request_id="kserve-8")
        response = await client.infer(request)
        x = response.outputs[0].as_numpy().tolist()
        inferred = {"id": response.id, "model_name": response.model_name, "x": x}
        try:
            await client.is_model_ready("vae_other")
            unknown = None
        except grpc.aio.AioRpcError as exc:
            unknown = exc.code().name
    async with grpc.aio.insecure_channel(target) as channel:  # the SDK's client has no metadata call
        stub = GRPCInferenceServiceStub(channel)
        metadata = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
    server = {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}
    return {"health": health, "inferred": inferred, "unknown_model": unknown, "server": server}


if __name__ == "__main__":
    url, target, scenario, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    result = asyncio.run(rest(url, args) if scenario == "rest" else over_grpc(target, args))
    print(json.dumps(result))
