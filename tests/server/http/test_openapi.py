"""The OpenAPI document against the routes it describes: valid, complete (every route, parameter
and body), named right, its examples served, and its reply schemas what the server answers. In
process: the HTTP app through httpx's ASGI transport, no socket."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from support import DEFAULT_VERSION, InProcessHttp

from vae_serve.server.http import kserve
from vae_serve.server.http.app import ROUTES

L = 32


@pytest.fixture(scope="module")
def http() -> Iterator[InProcessHttp]:
    app = InProcessHttp()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def spec(http) -> dict:
    return http.get("/openapi.json").json()


def _operations() -> list[tuple[str, str]]:
    """(path, method) of every route served, as the document writes them."""
    served = [(path, method.lower()) for path, _, method in ROUTES]
    for route in kserve.routes():
        served += [(route.path, method.lower()) for method in route.methods - {"HEAD"}]
    return served


def _parameters(spec: dict, operation: dict) -> dict[tuple[str, str], dict]:
    """(where, name): parameter, with references resolved."""
    found = {}
    for parameter in operation.get("parameters", []):
        if "$ref" in parameter:
            parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        found[parameter["in"], parameter["name"]] = parameter
    return found


def test_the_document_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.1")


@pytest.mark.parametrize(("path", "method"), _operations())
def test_every_route_is_described_with_its_path_parameters(spec, path, method):
    operation = spec["paths"][path][method]
    declared = {name for where, name in _parameters(spec, operation) if where == "path"}
    assert declared == set(re.findall(r"{(\w+)}", path))
    assert ("header", "x-request-id") in _parameters(spec, operation)
    error = operation["responses"]["4XX"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorResponse"}


# The default model's routes, and every model's.
V1_PREFIXES = ("/v1", "/v1/models/{model}")
# Every route that reads a body: the schema of its JSON, whether it is required, what else it takes.
_V1_BODIES = {
    "/encode": ("ImagesBody", True, {"image/png", "image/jpeg", "multipart/form-data"}),
    "/reconstruct": ("ImagesBody", True, {"image/png", "image/jpeg", "multipart/form-data"}),
    "/decode": ("DecodeBody", True, set()),
    "/sample": ("SampleBody", True, set()),
}
BODIES = {
    **{(f"{prefix}{route}", "post"): body for route, body in _V1_BODIES.items() for prefix in V1_PREFIXES},
    ("/v2/models/{model_name}/infer", "post"): ("InferenceRequest", True, {"application/octet-stream"}),
    ("/v2/models/{model_name}/versions/{model_version}/infer", "post"): (
        "InferenceRequest",
        True,
        {"application/octet-stream"},
    ),
    ("/v2/repository/index", "post"): ("RepositoryIndexRequest", False, set()),
}


def test_bodies_are_declared_under_their_own_names(spec):
    for (path, method), (name, required, others) in BODIES.items():
        body = spec["paths"][path][method]["requestBody"]
        assert body["required"] is required, path
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}
        assert set(body["content"]) - {"application/json"} == others, path
    described = {(path, method) for path, methods in spec["paths"].items() for method in methods}
    with_body = {op for op in described if "requestBody" in spec["paths"][op[0]][op[1]]}
    assert with_body == set(BODIES)
    assert "EncodeBody" not in str(spec)  # encode and reconstruct share one neutral name
    assert spec["components"]["schemas"]["ImagesBody"]["title"] == "ImagesBody"


def test_the_sample_link_declares_its_query_with_types_and_bounds(spec, http):
    operation = spec["paths"]["/v1/sample"]["get"]
    query = {name: p for (where, name), p in _parameters(spec, operation).items() if where == "query"}
    most = http.get("/v1/model").json()["limits"]["max_samples"]
    assert query["n"]["schema"] == {"type": "integer", "minimum": 1, "maximum": most, "default": 16}
    assert spec["components"]["schemas"]["SampleBody"]["properties"]["num_samples"]["maximum"] == most
    assert query["seed"]["schema"] == {"type": "integer", "minimum": 0, "exclusiveMaximum": 2**64}
    assert query["decode"]["schema"] == {"type": "boolean", "default": True}
    assert query["model_version"]["schema"] == {"type": "string"}
    assert not any(p["required"] for p in query.values())
    refused = http.get("/v1/sample", params={"bogus": 1}).json()["error"]
    assert refused.endswith(f"use {', '.join(query)}")  # what the route reads is what is declared
    assert ("header", "x-timeout-ms") in _parameters(spec, operation)
    model = _parameters(spec, spec["paths"]["/v1/model"]["get"])
    assert model["query", "model_version"]["schema"] == {"type": "string"}


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"n": 100_000}, "n: must be between 1 and 4096, got 100000"),
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"n": "many"}, "n: Input should be a valid integer"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**64}, "seed: Input should be less than 18446744073709551616"),
        ({"decode": "perhaps"}, "decode: Input should be a valid boolean"),
    ],
)
def test_the_sample_links_errors_name_the_parameter_sent(http, params, error):
    reply = http.get("/v1/sample", params=params)
    assert reply.status_code == 400 and reply.json()["error"].startswith(error), reply.text
    assert "num_samples" not in reply.text


def test_the_body_names_its_own_field(http):
    reply = http.post("/v1/sample", json={"num_samples": 100_000})
    assert reply.status_code == 400 and reply.json()["error"].startswith("num_samples: must be between")


def test_every_example_is_a_request_the_server_takes(spec, http):
    """What "Try it out" sends as it comes: each body example, to each path that shows it."""
    tried = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            example = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" not in example:
                continue
            path_values = {
                name: p.get("example", DEFAULT_VERSION)  # a model, or the version served
                for (where, name), p in _parameters(spec, operation).items()
                if where == "path"
            }
            reply = http.request(method, path.format(**path_values), json=example["example"])
            assert reply.status_code == 200, (path, reply.text)
            tried.append(path)
    assert {"/v1/decode", "/v1/encode", "/v1/sample", "/v2/models/{model_name}/infer"} <= set(tried)
    decode = spec["paths"]["/v1/decode"]["post"]["requestBody"]["content"]["application/json"]
    (row,) = decode["example"]["z"]
    assert len(row) == L
    assert spec["components"]["schemas"]["DecodeBody"]["examples"] == [decode["example"]]


# Routes answered without a body or parameters but the path's, and what to call them with.
PLAIN = {
    "/v1/model": {},
    "/v1/stats": {},
    "/v2": {},
    "/v2/health/live": {},
    "/v2/health/ready": {},
    "/v2/models/stats": {},
    "/v2/models/{model_name}": {"model_name": "vae_encoder"},
    "/v2/models/{model_name}/ready": {"model_name": "vae_encoder"},
    "/v2/models/{model_name}/config": {"model_name": "vae_encoder"},
    "/v2/models/{model_name}/stats": {"model_name": "vae_decoder"},
    "/v2/models/{model_name}/versions/{model_version}": {
        "model_name": "vae_decoder",
        "model_version": DEFAULT_VERSION,
    },
}


@pytest.mark.parametrize("path", list(PLAIN))
def test_replies_are_what_the_document_says(spec, http, path):
    """Each 200 body against the schema the document gives it; and an error against its own."""
    described = spec["paths"][path]["get"]["responses"]
    for status, url in (("200", path.format(**PLAIN[path])), ("4XX", "/v2/models/vae_other/ready")):
        schema = described[status]["content"]["application/json"]["schema"]
        reply = http.get(url)
        assert reply.status_code // 100 == int(status[0])
        # the document's components travel with the schema, so its references resolve
        OAS31Validator({**schema, "components": spec["components"]}).validate(reply.json())


def test_sample_replies_are_what_the_document_says(spec, http):
    schema = spec["paths"]["/v1/sample"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    reply = http.get("/v1/sample", params={"n": 2, "seed": 1})
    OAS31Validator({**schema, "components": spec["components"]}).validate(reply.json())
    assert "image/png" in spec["paths"]["/v1/sample"]["get"]["responses"]["200"]["content"]
