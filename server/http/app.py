"""The HTTP front end as one ASGI app: KServe v2 REST (kserve.py), the REST API for people
(people.py), their OpenAPI document with interactive docs served from the package, and the web
playground at `/` (page.py).

FastAPI describes every route (the OpenAPI document, the docs page) and answers what no route
matches, with `{"error": "..."}` instead of its default pages. The API routes themselves are
served by a plain Starlette router in front of it (`_Api`): they read their own bodies (within
the limits, off the loop when large) and answer their own errors, so FastAPI's middleware stack,
body parsing and dependency solving would only add cost: measured, about a third of a lone
request's server CPU (bench/rest.py).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Match, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from vae_serve import __version__
from vae_serve.server.settings import HttpSettings

from . import kserve, page, people
from .endpoint import Front, error_response

__all__ = ["build_app"]

DOCS_ASSETS = "/docs/assets"

_Route = tuple[str, Any, str, type | None, dict[str, Any] | None]


def _body(model: type, *types: str) -> dict[str, Any]:
    """An `openapi_extra` request body: the JSON schema of `model` (and other media types)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    for media in types:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


_PICTURES = ("image/png", "image/jpeg", "multipart/form-data")
_PNG = {"responses": {"200": {"content": {"image/png": {}}}}}

ROUTES: list[_Route] = [
    ("/v1/model", people.model, "GET", people.ModelReply, None),
    ("/v1/stats", people.stats, "GET", people.StatsReply, None),
    ("/v1/encode", people.encode, "POST", people.EncodeReply, _body(people.EncodeBody, *_PICTURES)),
    ("/v1/decode", people.decode, "POST", people.DecodeReply, {**_body(people.DecodeBody), **_PNG}),
    ("/v1/sample", people.sample, "POST", people.SampleReply, {**_body(people.SampleBody), **_PNG}),
    ("/v1/sample", people.sample_link, "GET", people.SampleReply, _PNG),
    (
        "/v1/reconstruct",
        people.reconstruct,
        "POST",
        people.ReconstructReply,
        {**_body(people.EncodeBody, *_PICTURES), **_PNG},
    ),
]


def _takes_request(route: Any) -> Any:
    """What FastAPI should see of a route: one `Request` argument (no parameters to parse)."""
    route.__signature__ = inspect.Signature(
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
    )
    return route


class _Api:
    """The API routes first, straight from the router; everything else to FastAPI."""

    def __init__(self, routes: list[Route], app: FastAPI) -> None:
        self.routes, self.app = routes, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["app"] = self.app  # `request.app.state.front`, as under FastAPI
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def build_app(front: Front, settings: HttpSettings) -> ASGIApp:
    app = FastAPI(
        title="vae-serve",
        version=__version__,
        description="A VAE's encoder and decoder: KServe v2 REST (/v2) and a REST API for people (/v1).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.front = front
    api = [Route(path, route, methods=[method]) for path, route, method, _, _ in ROUTES] + kserve.routes()
    for path, route, method, reply, extra in ROUTES:
        app.add_api_route(
            path,
            _takes_request(route),
            methods=[method],
            response_model=reply,
            openapi_extra=extra,
            tags=["v1"],
        )
    for route in kserve.routes():
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        app.add_api_route(
            route.path,
            _takes_request(route.endpoint),
            methods=sorted(route.methods - {"HEAD"}),
            tags=["KServe v2"],
            openapi_extra={"parameters": parameters} if parameters else None,
        )

    assets = Path(swagger_ui_path)
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="vae-serve API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # else a badge is fetched from swagger.io
        )

    if settings.playground:
        page.mount(app)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Unknown paths and methods: the JSON error every other failure gets, not HTML."""
        message = {404: f"no route {request.url.path[:128]!r}", 405: f"{request.method} is not allowed here"}
        response = error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)))
        response.headers.update(exc.headers or {})  # Allow, on a 405
        return response

    served: ASGIApp = _Api(api, app)
    if settings.http_cors_origins:
        served = CORSMiddleware(
            served,
            allow_origins=settings.http_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "content-type",
                "accept",
                "x-request-id",
                "x-timeout-ms",
                "inference-header-content-length",
            ],
            expose_headers=["x-request-id", "inference-header-content-length"],
        )
    return served
