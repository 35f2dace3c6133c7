"""KServe v2 REST (the Open Inference Protocol over HTTP), as Triton serves it on its port 8000,
with its binary tensor data extension: `tritonclient.http` works in JSON and in binary mode.

Each route decodes its request (kserve_codec.py), calls the one OIP service that gRPC calls too
(protocol/oip_service.py, with Triton's extensions: `front.oip`) and encodes the answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vae_serve.errors import InvalidInput

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
INLINE_ROWS = 64  # replies of more rows are encoded on a thread


def _model(request: Request) -> tuple[str, str | None]:
    """The model and version the path names (no version: the latest)."""
    return request.path_params["model_name"], request.path_params.get("model_version")


@endpoint("ServerMetadata")
async def server_metadata(front: Front, request: Request) -> Response:
    metadata = front.oip.server_metadata()
    extensions = ["binary_tensor_data", *metadata.extensions]
    return json_response({"name": metadata.name, "version": metadata.version, "extensions": extensions})


# The health bodies are the KServe SDK's (its REST client reads them); not ready stays a 503 with
# the error body, as KServe's own server answers, so probes keep reading the status alone.
@endpoint("ServerLive", probe=True)
async def live(front: Front, request: Request) -> Response:
    return json_response({"live": True})


def _not_ready(front: Front) -> Response:
    return error_response(503, f"not ready ({front.dataplane.state.phase.name.lower()})")


@endpoint("ServerReady", probe=True)
async def ready(front: Front, request: Request) -> Response:
    return json_response({"ready": True}) if front.oip.ready else _not_ready(front)


@endpoint("ModelReady", probe=True)
async def model_ready(front: Front, request: Request) -> Response:
    name, version = _model(request)
    if not front.oip.model_ready(name, version):
        return _not_ready(front)
    return json_response({"name": name, "ready": True})


@endpoint("ModelMetadata")
async def model_metadata(front: Front, request: Request) -> Response:
    return json_response(dataclasses.asdict(front.oip.model_metadata(*_model(request))))


@endpoint("ModelInfer", work=True, bodies=BODIES)
async def infer(front: Front, request: Request) -> Response:
    limits = front.dataplane.limits
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:  # all JSON
        body = await read_body(request, MAX_JSON_BYTES, JSON_LIMIT)
    else:
        body = await read_body(request, limits.max_message_bytes)
    parse = functools.partial(parse_request, body, header_length, *_model(request), limits.max_request_rows)
    big = len(body) > OFF_LOOP_BYTES
    parsed = await asyncio.to_thread(parse) if big else parse()
    del body
    inference = front.oip.prepare(parsed)
    check_json_reply(inference.text_values, BINARY_HINT)
    answer = await front.oip.run(inference, deadline_from(request, parsed.timeout_s))
    binary = {name: parsed.binary(name) for name in answer.outputs}
    encode = functools.partial(
        encode_response, answer.model, answer.version, answer.id, answer.outputs, binary
    )
    rows = len(inference.array)
    reply, reply_header_length = await asyncio.to_thread(encode) if big or rows > INLINE_ROWS else encode()
    if reply_header_length is None:
        return Response(reply, media_type="application/json")
    response = Response(reply, media_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(reply_header_length)
    return response


@endpoint("ModelConfig")
async def model_config(front: Front, request: Request) -> Response:
    return json_response(front.oip.config(*_model(request)))


@endpoint("ModelStatistics")
async def model_statistics(front: Front, request: Request) -> Response:
    params = request.path_params
    stats = await front.oip.statistics(params.get("model_name", ""), params.get("model_version", ""))
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
    return json_response(await front.oip.index(ready))


@endpoint("RepositoryModelLoad", bodies=BODIES)
async def repository_load(front: Front, request: Request) -> Response:
    await front.oip.load(request.path_params["model_name"], request.headers.getlist("authorization"))
    return json_response({})


@endpoint("RepositoryModelUnload", bodies=BODIES)
async def repository_unload(front: Front, request: Request) -> Response:
    await front.oip.unload(request.path_params["model_name"], request.headers.getlist("authorization"))
    return json_response({})


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
