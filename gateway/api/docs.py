"""The API's documentation pages (Swagger UI at /docs, ReDoc at /redoc) served from the
node's own files: the scripts and styles come with the `fastapi-offline` package, installed
with the gateway, never from a CDN that a hospital's network will not reach. The pages'
Content-Security-Policy keeps them on their own host (ReDoc's sidebar would fetch its
maker's logo from one)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC = "/docs/static"
ASSETS = Path(fastapi_offline.__file__).parent / "static"
# FastAPI's pages start the viewer with an inline script; everything else is this host's.
_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)


def documented_app(**kwargs: Any) -> FastAPI:
    """A FastAPI application whose /docs and /redoc load nothing from another host."""
    app = FastAPI(docs_url=None, redoc_url=None, **kwargs)
    app.mount(DOCS_STATIC, StaticFiles(directory=ASSETS), name="docs-static")
    spec, icon = app.openapi_url or "/openapi.json", f"{DOCS_STATIC}/favicon.png"
    swagger = functools.partial(
        get_swagger_ui_html,
        openapi_url=spec,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url=icon,
    )
    redoc = functools.partial(
        get_redoc_html,
        openapi_url=spec,
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
        redoc_favicon_url=icon,
        with_google_fonts=False,
    )
    app.add_api_route("/docs", _own(swagger), include_in_schema=False)
    app.add_api_route("/redoc", _own(redoc), include_in_schema=False)
    return app


def _own(render: Callable[[], HTMLResponse]) -> Callable[[], Awaitable[HTMLResponse]]:
    """The page `render` makes, under the policy that keeps it on its host."""

    async def page() -> HTMLResponse:
        response = render()
        response.headers["Content-Security-Policy"] = _POLICY
        return response

    return page
