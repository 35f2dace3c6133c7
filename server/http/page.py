"""The web playground: one HTML page, plain ES modules and CSS from the package (`playground/`).

No build step and nothing from elsewhere: the page at `/` carries a Content-Security-Policy that
lets it load and call this origin alone, so a CDN, a web font or an inline script would be refused
by the browser. Its assets are under `/playground/`, typed by a fixed table (JS modules must be
`text/javascript`, whatever the host's /etc/mime.types says) and revalidated on every load
(`no-cache` with an ETag: a 304 costs little, and an upgraded server never runs stale scripts).
Files are read by Starlette off the event loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["ASSETS", "CSP", "FOLDER", "HEADERS", "Assets", "mount"]

FOLDER = Path(__file__).parent / "playground"
ASSETS = "/playground"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class Assets(StaticFiles):
    """The package's files, with the types and headers above (the API page's too: apidocs.py)."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(HEADERS)
        if response.status_code == 200:
            response.headers["content-type"] = _TYPES.get(Path(full_path).suffix, "application/octet-stream")
        return response


def mount(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/playground/`."""
    app.mount(ASSETS, Assets(directory=FOLDER), name="playground")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(request: Request) -> Response:
        return FileResponse(
            FOLDER / "index.html",
            media_type=_TYPES[".html"],
            headers={**HEADERS, "content-security-policy": CSP},
        )
