"""``/docs`` (Swagger UI) and ``/redoc`` served from local files, so they work offline.

FastAPI's own pages load their scripts from a CDN, while the console is meant to
work with no internet (an operations centre's network often has none). The
assets come from the ``fastapi-offline`` wheel, which ships Swagger UI and ReDoc
builds; they are served like the console's files (in memory, with an ETag).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

from citybrain.console.routes import StaticFile, load_static, respond
from citybrain.routes.context import ApiContext
from citybrain.security.auth import public

__all__ = ["ASSETS_PACKAGE", "build", "load_assets"]

ASSETS_PACKAGE = "fastapi_offline"
_ASSETS = "/docs/assets"
_OAUTH2_REDIRECT = "/docs/oauth2-redirect"
_OPENAPI = "/openapi.json"
_TITLE = "citybrain API"


def load_assets() -> dict[str, StaticFile]:
    """Swagger UI's and ReDoc's scripts, styles and icon, by file name."""
    try:
        root = resources.files(ASSETS_PACKAGE).joinpath("static")
    except ModuleNotFoundError as exc:  # a broken install, not a runtime condition
        raise RuntimeError("the API docs need the fastapi-offline package (pip install fastapi-offline)") from exc
    return load_static(root)


def build(ctx: ApiContext, assets: dict[str, StaticFile] | None = None) -> APIRouter:
    """Routes ``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and ``/docs/assets/{name}``.

    Args:
        ctx: Shared dependencies (unused: the pages are static).
        assets: The files to serve; by default those of the fastapi-offline package.
    """
    del ctx
    files = assets if assets is not None else load_assets()
    router = APIRouter(include_in_schema=False)
    shape = Depends(public("API documentation: the API's shape, no data"))

    @router.get("/docs", dependencies=[shape])
    async def swagger() -> Response:
        return get_swagger_ui_html(
            openapi_url=_OPENAPI,
            title=f"{_TITLE} — Swagger UI",
            oauth2_redirect_url=_OAUTH2_REDIRECT,
            swagger_js_url=f"{_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_ASSETS}/favicon.png",
        )

    @router.get(_OAUTH2_REDIRECT, dependencies=[shape])
    async def oauth2_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc", dependencies=[shape])
    async def redoc() -> Response:
        return get_redoc_html(
            openapi_url=_OPENAPI,
            title=f"{_TITLE} — ReDoc",
            redoc_js_url=f"{_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{_ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    @router.get(_ASSETS + "/{name}", dependencies=[shape])
    async def asset(name: str, request: Request) -> Response:
        f = files.get(name)
        if f is None:
            raise HTTPException(404, "no such documentation asset")
        return respond(request, f)

    return router
