"""The OpenAPI document (`/openapi.json`, which the page at `/docs` reads): every route, what it
takes (path, query and header parameters, bodies) and what it answers.

The routes read their own requests (app.py), so FastAPI sees none of their parameters: each one
is declared here, from the pydantic model the route validates with where it has one. What depends
on the models served (the names a path takes, a latent vector's width in an example) is filled in
from them when the document is first asked for. tests/server/http/test_openapi.py holds the
document to the routes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.routing import Route

from vae_serve.server.models.selection import ALIAS
from vae_serve.server.protocol.calls import REQUEST_ID_HEADER
from vae_serve.server.protocol.oip_models import oip_name

from . import kserve, rest
from . import kserve_schema as v2
from .call import MAX_TIMEOUT_MS, TIMEOUT_HEADER
from .endpoint import BINARY, JSON, Front
from .kserve_codec import HEADER_LENGTH

__all__ = ["describe"]

SCHEMAS = "#/components/schemas/"
PARAMETERS = "#/components/parameters/"
PNG = "image/png"
PICTURES = (PNG, "image/jpeg", "multipart/form-data")


class ModelQuery(BaseModel):
    """GET /v1/model's query, which rest.model reads."""

    model_version: rest.Version = None


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": SCHEMAS + model.__name__}


@dataclass(frozen=True)
class Doc:
    """What the document says of one handler, on every path it serves."""

    tag: str
    summary: str
    reply: Any = None  # the model of a 200's JSON body
    body: type[BaseModel] | None = None  # the model of a JSON body
    body_required: bool = True
    body_types: tuple[str, ...] = ()  # what else the body may be: pictures, binary tensors
    reply_types: tuple[str, ...] = ()  # what else a 200 may be: a PNG grid, binary tensors
    query: type[BaseModel] | None = None  # the model of the query string
    headers: tuple[str, ...] = ()  # names in COMMON_PARAMETERS, beyond the request id


V1, V2 = "v1", "KServe v2"
WORK = (TIMEOUT_HEADER,)
DOCS: dict[Callable[..., Any], Doc] = {
    rest.models: Doc(V1, "The models served, and which is the default", rest.ModelsReply),
    rest.model: Doc(
        V1, "What a model is, and the limits a request must keep", rest.ModelReply, query=ModelQuery
    ),
    rest.stats: Doc(V1, "Requests, errors and latency per method over the last minute", rest.StatsReply),
    rest.encode: Doc(
        V1, "Encode images", rest.EncodeReply, rest.ImagesBody, body_types=PICTURES, headers=WORK
    ),
    rest.decode: Doc(
        V1, "Decode latent vectors", rest.DecodeReply, rest.DecodeBody, reply_types=(PNG,), headers=WORK
    ),
    rest.sample: Doc(
        V1,
        "Sample the prior or posteriors",
        rest.SampleReply,
        rest.SampleBody,
        reply_types=(PNG,),
        headers=WORK,
    ),
    rest.sample_link: Doc(
        V1,
        "Sample the prior (a link)",
        rest.SampleReply,
        query=rest.SampleQuery,
        reply_types=(PNG,),
        headers=WORK,
    ),
    rest.reconstruct: Doc(
        V1,
        "Encode images, then decode their means",
        rest.ReconstructReply,
        rest.ImagesBody,
        body_types=PICTURES,
        reply_types=(PNG,),
        headers=WORK,
    ),
    kserve.server_metadata: Doc(V2, "Server metadata", v2.ServerMetadataResponse),
    kserve.live: Doc(V2, "Server live", v2.ServerLiveResponse),
    kserve.ready: Doc(V2, "Server ready", v2.ServerReadyResponse),
    kserve.model_ready: Doc(V2, "Model ready", v2.ModelReadyResponse),
    kserve.model_metadata: Doc(V2, "Model metadata", v2.ModelMetadataResponse),
    kserve.infer: Doc(
        V2,
        "Inference",
        v2.InferenceResponse,
        v2.InferenceRequest,
        body_types=(BINARY,),
        reply_types=(BINARY,),
        headers=(*WORK, HEADER_LENGTH),
    ),
    kserve.model_config: Doc(V2, "Model configuration (Triton's)", dict[str, Any]),
    kserve.model_statistics: Doc(V2, "Model statistics (Triton's)", v2.ModelStatisticsResponse),
    kserve.repository_index: Doc(
        V2,
        "Repository index (Triton's)",
        list[v2.RepositoryModel],
        v2.RepositoryIndexRequest,
        body_required=False,
    ),
    kserve.repository_load: Doc(V2, "Load a model: refused (versions come from the repository)"),
    kserve.repository_unload: Doc(V2, "Unload a model: refused (versions come from the repository)"),
}

COMMON_PARAMETERS: dict[str, dict[str, Any]] = {
    REQUEST_ID_HEADER: {
        "name": REQUEST_ID_HEADER,
        "in": "header",
        "description": "Echoed in the reply and logged; when absent, or not 1 to 128 of "
        "[A-Za-z0-9._:-], the server makes one.",
        "schema": {"type": "string"},
    },
    TIMEOUT_HEADER: {
        "name": TIMEOUT_HEADER,
        "in": "header",
        "description": "The caller's deadline in milliseconds: past it the call is given up (504).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS},
    },
    HEADER_LENGTH: {
        "name": HEADER_LENGTH,
        "in": "header",
        "description": "Binary tensor data: the length of the JSON header that the tensors' bytes follow.",
        "schema": {"type": "integer", "minimum": 0},
    },
}
_PATH_PARAMETERS = {
    "model": {
        "description": "A model served, by its name in the repository (GET /v1/models lists them); "
        "the same route without /models/{model} answers for the default model.",
        "schema": {"type": "string"},
    },
    "model_name": {
        "description": "A graph of a model served: <model>_encoder or <model>_decoder, and for the "
        "default model also vae_encoder or vae_decoder.",
        "schema": {"type": "string"},
    },
    "model_version": {
        "description": "A version served (the model's metadata lists them).",
        "schema": {"type": "string"},
    },
}
_ERRORS = {
    "4XX": "Refused: the request (400), a model or version (404), its size (413), its type (415), "
    "the server's load (429)",
    "5XX": "Failed (500), not served (501), not ready or draining (503), past the deadline (504)",
}


def describe(app: FastAPI, routes: list[Route], front: Front) -> None:
    """Add `routes` to `app` for the document alone (app.py serves them), and complete what
    FastAPI writes of them the first time it is asked for."""
    for route in routes:
        doc = DOCS[route.endpoint]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            app.add_api_route(
                route.path,
                _takes_request(route.endpoint),
                methods=[method],
                response_model=doc.reply,
                summary=doc.summary,
                tags=[doc.tag],
                openapi_extra=_operation(doc, route.path),
            )
    written = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = written()  # FastAPI's: also kept as app.openapi_schema
        _complete(document, front)
        return document

    # FastAPI's documented way to amend its document; mypy refuses any assignment to a method.
    app.openapi = openapi  # type: ignore[method-assign]


def _takes_request(route: Any) -> Any:
    """What FastAPI should see of a route: one `Request` argument (no parameters to parse)."""
    route.__signature__ = inspect.Signature(
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    )
    return route


def _operation(doc: Doc, path: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, **_PATH_PARAMETERS[name]}
        for name in re.findall(r"{(\w+)}", path)
    ]
    if doc.query is not None:
        parameters += _query(doc.query)
    parameters += [{"$ref": PARAMETERS + name} for name in (REQUEST_ID_HEADER, *doc.headers)]
    error = {"content": {JSON: {"schema": _ref(v2.ErrorResponse)}}}
    operation: dict[str, Any] = {
        "parameters": parameters,
        "responses": {status: {"description": text, **error} for status, text in _ERRORS.items()},
    }
    if doc.reply_types:
        operation["responses"]["200"] = {"content": {kind: {} for kind in doc.reply_types}}
    if doc.body is not None:
        content: dict[str, Any] = {JSON: {"schema": _ref(doc.body)}}
        for kind in doc.body_types:
            content[kind] = {"schema": {"type": "string", "format": "binary"}}
        operation["requestBody"] = {"required": doc.body_required, "content": content}
    return operation


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Query parameters from the model a route validates its query with."""
    schema = model.model_json_schema()
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        description = prop.pop("description", None)
        for option in prop.pop("anyOf", []):  # `int | None`: a query parameter is absent instead
            if option.get("type") != "null":
                prop.update(option)
        parameter = {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", ()),
            "schema": prop,
        }
        parameters.append({**parameter, "description": description} if description else parameter)
    return parameters


def _complete(document: dict[str, Any], front: Front) -> None:
    """What FastAPI leaves out: the bodies' schemas, the shared parameters, and what depends on
    the server: the most samples a link may ask, and examples of the model served."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for body_model in {doc.body for doc in DOCS.values() if doc.body is not None} | {v2.ErrorResponse}:
        schema = body_model.model_json_schema(ref_template=SCHEMAS + "{model}")
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas[body_model.__name__] = schema
    components["parameters"] = COMMON_PARAMETERS

    most = front.dataplane.limits.max_samples  # a setting: the models cannot say it
    for path in ("/v1/sample", "/v1/models/{model}/sample"):
        link = document["paths"][path]["get"]
        (n,) = (p for p in link["parameters"] if p.get("name") == "n")
        n["schema"]["maximum"] = most
    schemas[rest.SampleBody.__name__]["properties"]["num_samples"]["maximum"] = most

    models = front.dataplane.models
    named = {"model": models.names, "model_name": models.oip_names()}
    shown = models.default or next(iter(models.names), None)  # the model the examples are of
    entry = None if shown is None else models.get(shown)
    served = None if entry is None else entry.versions.latest
    if served is None:
        return
    model = served.model
    # The paths' examples name that model; the inference example is for its decoder.
    owner = ALIAS if model.name == models.default else model.name
    in_path = {"model": model.name, "model_name": oip_name(owner, "decoder")}
    z, x = [[0.0] * model.latent_dim], [[0.5] * model.input_dim]
    examples: dict[type[BaseModel], dict[str, Any]] = {
        rest.DecodeBody: {"z": z},
        rest.ImagesBody: {"x": x},
        rest.SampleBody: {"num_samples": 4, "seed": 7},
        v2.InferenceRequest: {
            "id": "1",
            "inputs": [{"name": "z", "shape": [1, model.latent_dim], "datatype": "FP32", "data": z[0]}],
        },
    }
    for body, example in examples.items():
        schemas[body.__name__]["examples"] = [example]
    by_ref = {_ref(body)["$ref"]: example for body, example in examples.items()}
    for path in document["paths"].values():
        for operation in path.values():
            as_json = operation.get("requestBody", {}).get("content", {}).get(JSON, {})
            if as_json.get("schema", {}).get("$ref") in by_ref:  # what "Try it out" starts from
                as_json["example"] = by_ref[as_json["schema"]["$ref"]]
            for parameter in operation.get("parameters", []):
                name = parameter.get("name")
                if name in named and parameter.get("in") == "path":
                    parameter["schema"] = {**parameter["schema"], "enum": named[name]}
                    parameter["example"] = in_path[name]
