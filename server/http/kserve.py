"""KServe v2 REST (the Open Inference Protocol over HTTP), as Triton serves it on its port 8000,
with its binary tensor data extension: `tritonclient.http` works in JSON and in binary mode.

The same two models as the gRPC OIP (oip_models.py), over the same data plane.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vae_serve import __version__
from vae_serve.errors import InvalidInput, ModelNotFound, quote
from vae_serve.server.models.versions import ServedModel
from vae_serve.server.protocol.oip_extensions import EXTENSIONS, model_control_refused
from vae_serve.server.protocol.oip_models import GRAPHS, OipModel, OipTensor

from .call import OFF_LOOP_BYTES, deadline_from
from .endpoint import (
    BINARY,
    JSON,
    Front,
    check_json_reply,
    endpoint,
    error_response,
    json_response,
    read_body,
)
from .kserve_codec import HEADER_LENGTH, encode_response, parse_request
from .limits import MAX_JSON_BYTES

__all__ = ["routes"]

JSON_LIMIT = "JSON limit (binary tensor data, with Inference-Header-Content-Length, carries more)"
BINARY_HINT = "ask for the outputs as binary data (binary_data_output)"
MAX_INDEX_BODY = 1024  # a repository index request says at most {"ready": true}
# The KServe SDK labels a binary request octet-stream, and tritonclient.http.aio (aiohttp) any
# request, JSON too; tritonclient.http labels none (JSON, as check_body_type reads it).
BODIES = (JSON, BINARY)


def _model(front: Front, request: Request) -> tuple[str, OipModel, ServedModel]:
    name = request.path_params["model_name"]
    if name not in GRAPHS:
        raise ModelNotFound(f"no model {quote(name)}; models: {', '.join(GRAPHS)}")
    return name, GRAPHS[name], front.dataplane.current(request.path_params.get("model_version"))


@endpoint("ServerMetadata")
async def server_metadata(front: Front, request: Request) -> Response:
    extensions = ["binary_tensor_data", *EXTENSIONS]
    return json_response({"name": "vae-serve", "version": __version__, "extensions": extensions})


# The health bodies are the KServe SDK's (its REST client reads them); not ready stays a 503 with
# the error body, as KServe's own server answers, so probes keep reading the status alone.
@endpoint("ServerLive", probe=True)
async def live(front: Front, request: Request) -> Response:
    return json_response({"live": True})


@endpoint("ServerReady", probe=True)
async def ready(front: Front, request: Request) -> Response:
    if front.dataplane.ready:
        return json_response({"ready": True})
    return error_response(503, f"not ready ({front.dataplane.state.phase.name.lower()})")


@endpoint("ModelReady", probe=True)
async def model_ready(front: Front, request: Request) -> Response:
    if not front.dataplane.ready:
        return error_response(503, f"not ready ({front.dataplane.state.phase.name.lower()})")
    name, _, _ = _model(front, request)
    return json_response({"name": name, "ready": True})


@endpoint("ModelMetadata")
async def model_metadata(front: Front, request: Request) -> Response:
    name, graph, served = _model(front, request)

    def meta(tensor: OipTensor) -> dict[str, object]:
        return {"name": tensor.name, "datatype": "FP32", "shape": [-1, tensor.width(served.model)]}

    return json_response(
        {
            "name": name,
            "versions": front.dataplane.served.loaded,
            "platform": "onnxruntime_onnx",
            "inputs": [meta(graph.input)],
            "outputs": [meta(tensor) for tensor in graph.outputs],
        }
    )


@endpoint("ModelInfer", work=True, bodies=BODIES)
async def infer(front: Front, request: Request) -> Response:
    name, graph, served = _model(front, request)
    plane = front.dataplane
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:  # all JSON
        body = await read_body(request, MAX_JSON_BYTES, JSON_LIMIT)
    else:
        body = await read_body(request, plane.limits.max_message_bytes)
    parse = functools.partial(
        parse_request,
        body,
        header_length,
        name,
        graph.input.name,
        tuple(tensor.name for tensor in graph.outputs),
        plane.limits.max_request_rows,
        graph.input.width(served.model),
    )
    big = len(body) > OFF_LOOP_BYTES
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which validation refuses
        parsed = await asyncio.to_thread(parse) if big else parse()
    del body
    as_text = sum(not binary for binary in parsed.binary.values())
    check_json_reply(len(parsed.array) * as_text * graph.outputs[0].width(served.model), BINARY_HINT)
    values, version = await graph.run(
        plane, parsed.array, deadline_from(request, parsed.timeout_s), served.version
    )
    outputs = dict(zip((tensor.name for tensor in graph.outputs), values, strict=True))
    encode = functools.partial(encode_response, name, version, parsed.id, outputs, parsed.binary)
    reply, reply_header_length = await asyncio.to_thread(encode) if big or len(values[0]) > 64 else encode()
    if reply_header_length is None:
        return Response(reply, media_type="application/json")
    response = Response(reply, media_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(reply_header_length)
    return response


@endpoint("ModelConfig")
async def model_config(front: Front, request: Request) -> Response:
    params = request.path_params
    return json_response(front.extensions.config(params["model_name"], params.get("model_version")))


@endpoint("ModelStatistics")
async def model_statistics(front: Front, request: Request) -> Response:
    params = request.path_params
    stats = await front.extensions.statistics(params.get("model_name", ""), params.get("model_version", ""))
    return json_response({"model_stats": stats})


@endpoint("RepositoryIndex", bodies=BODIES)
async def repository_index(front: Front, request: Request) -> Response:
    """Triton's body is optional: `{"ready": true}` lists only the versions ready for inference."""
    body = await read_body(request, MAX_INDEX_BODY, "repository index limit")
    ready = False
    if body.strip():
        try:
            options = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidInput('body: not JSON; send {} or {"ready": true}') from None
        asked = options.get("ready", False) if isinstance(options, dict) else None
        if not isinstance(asked, bool):
            raise InvalidInput('body: a JSON object whose "ready", if given, is true or false')
        ready = asked
    return json_response(await front.extensions.index(ready))


@endpoint("RepositoryModelLoad", bodies=BODIES)
async def repository_load(front: Front, request: Request) -> Response:
    raise model_control_refused()


@endpoint("RepositoryModelUnload", bodies=BODIES)
async def repository_unload(front: Front, request: Request) -> Response:
    raise model_control_refused()


def routes() -> list[Route]:
    model = "/v2/models/{model_name}"  # the KServe SDK's names for them, in /openapi.json too
    version = model + "/versions/{model_version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/stats", model_statistics, methods=["GET"]),  # before /v2/models/{model_name}
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model_name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model_name}/unload", repository_unload, methods=["POST"]),
        *(Route(path, model_metadata, methods=["GET"]) for path in (model, version)),
        *(Route(path + "/ready", model_ready, methods=["GET"]) for path in (model, version)),
        *(Route(path + "/infer", infer, methods=["POST"]) for path in (model, version)),
        *(Route(path + "/config", model_config, methods=["GET"]) for path in (model, version)),
        *(Route(path + "/stats", model_statistics, methods=["GET"]) for path in (model, version)),
    ]
