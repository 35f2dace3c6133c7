"""The API page at `/docs`: Swagger UI 5 over the served `/openapi.json`, from the package alone.

FastAPI writes OpenAPI 3.1, which Swagger UI reads from version 5 on. Swagger UI's script and
styles are the fastapi-offline package's copy of its dist; the page and the script that starts it
(`swagger/start.js`) are ours, because the page carries the playground's self-only
Content-Security-Policy (page.py): nothing inline, nothing from elsewhere. Images alone may also be
`data:` (Swagger UI's icons are data URIs in its CSS) or `blob:` (a PNG reply shown by "Try it out").
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse

from .page import CSP as PAGE_CSP
from .page import HEADERS, Assets

__all__ = ["ASSETS", "CSP", "FOLDER", "PAGE", "mount"]

FOLDER = Path(__file__).parent / "swagger"  # start.js, beside fastapi-offline's files under ASSETS
PAGE = "/docs"
ASSETS = "/docs/assets"
# Where fastapi-offline keeps Swagger UI's files: swagger-ui-bundle.js, swagger-ui.css, favicon.png.
SWAGGER_UI = ("fastapi_offline", "static")
CSP = PAGE_CSP.replace("img-src 'self'", "img-src 'self' data: blob:")
_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vae-serve API</title>
<link rel="icon" href="{ASSETS}/favicon.png">
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
<script src="{ASSETS}/swagger-ui-bundle.js" defer></script>
<script src="{ASSETS}/start.js" defer></script>
</head>
<body>
<div id="swagger-ui"></div>
</body>
</html>
"""


def mount(app: FastAPI) -> None:
    """Serve the page at `/docs`, and under `/docs/assets/` its script and Swagger UI's files."""
    # StaticFiles checks the folders exist now: a fastapi-offline without them fails at start.
    app.mount(ASSETS, Assets(directory=FOLDER, packages=[SWAGGER_UI]), name="docs-assets")

    @app.api_route(PAGE, methods=["GET", "HEAD"], include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(_HTML, headers={**HEADERS, "content-security-policy": CSP})
