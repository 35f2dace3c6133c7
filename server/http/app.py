"""The HTTP front end as one ASGI app: KServe v2 REST (kserve.py), the REST API for people
(rest.py), their OpenAPI document (openapi.py) and the page at `/docs` that reads it
(apidocs.py), and the web playground at `/` (page.py).

FastAPI describes every route (the OpenAPI document, the docs page) and answers what no route
matches, with `{"error": "..."}` instead of its default pages. The API routes themselves are
served by a plain Starlette router in front of it (`_Api`): they read their own bodies (within
the limits, off the loop when large) and answer their own errors, so FastAPI's middleware stack,
body parsing and dependency solving would only add cost: measured, about a third of a lone
request's server CPU (bench/rest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vae_serve import __version__
from vae_serve.server.settings import HttpSettings

from . import apidocs, kserve, openapi, page, rest
from .endpoint import Front, error_response

__all__ = ["ROUTES", "api_routes", "build_app"]

# The routes of one model: at /v1 for the default model, and under /v1/models/{model} for each.
_MODEL_ROUTES: list[tuple[str, Callable[..., Any], str]] = [
    ("", rest.model, "GET"),
    ("/encode", rest.encode, "POST"),
    ("/decode", rest.decode, "POST"),
    ("/sample", rest.sample, "POST"),
    ("/sample", rest.sample_link, "GET"),
    ("/reconstruct", rest.reconstruct, "POST"),
]
ROUTES: list[tuple[str, Callable[..., Any], str]] = [  # the kserve.routes() beside them
    ("/v1/models", rest.models, "GET"),
    *((f"/v1{path or '/model'}", route, method) for path, route, method in _MODEL_ROUTES),
    *((f"/v1/models/{{model}}{path}", route, method) for path, route, method in _MODEL_ROUTES),
    ("/v1/stats", rest.stats, "GET"),
]


def api_routes() -> list[Route]:
    """Every route the API serves straight from the router: ROUTES and the KServe v2 ones."""
    return [Route(path, route, methods=[method]) for path, route, method in ROUTES] + kserve.routes()


class _Api:
    """The API routes first, straight from the router; everything else to FastAPI."""

    def __init__(self, routes: list[Route], app: FastAPI) -> None:
        # The inference routes first: they carry nearly all the traffic, and each route passed
        # costs a regular-expression match. They share no request with another route; the others
        # keep their order (`/v2/models/stats` before `/v2/models/{model_name}`).
        self.routes = sorted(routes, key=lambda route: not route.path.endswith("/infer"))
        self.app = app

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
    api = api_routes()
    openapi.describe(app, api, front)
    apidocs.mount(app)
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
