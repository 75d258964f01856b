"""Serve the operations console: ``/`` (index.html) and ``/static/{name}`` from package files.

The files are read once through :mod:`importlib.resources` (so the console works
from a wheel or a zip, with no network and no build step). Every response
carries a strong ETag and ``Cache-Control: no-cache``: browsers revalidate on
each load and get ``304 Not Modified`` while the file is unchanged, so an
upgraded platform is never shown with stale JavaScript. A Content-Security-Policy
allows only this origin (no CDN, no inline script).

The page and files are public (they carry no data); the console signs in with
``POST /api/v1/session`` and every data call it makes needs a permission.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from citybrain.routes.context import ApiContext
from citybrain.security.auth import public

__all__ = ["CONTENT_TYPES", "CSP", "StaticFile", "build", "load_static", "respond"]

STATIC_PACKAGE = "citybrain.console"
STATIC_DIR = "static"

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

# A file name under static/: no directories, no dot files, a known extension.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One console file, held in memory (the whole console is a few dozen kB)."""

    name: str
    body: bytes
    content_type: str
    etag: str


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def load_static(root: Traversable | None = None) -> dict[str, StaticFile]:
    """Every servable file of the console's static directory, by name."""
    base = root if root is not None else resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR)
    files: dict[str, StaticFile] = {}
    for entry in base.iterdir():
        name = entry.name
        ctype = CONTENT_TYPES.get(_suffix(name))
        if not entry.is_file() or ctype is None or not _NAME.match(name):
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[name] = StaticFile(name, body, ctype, etag)
    return files


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags


def respond(request: Request, f: StaticFile) -> Response:
    """One static file, with its ETag (answering 304 to a matching If-None-Match)."""
    headers = {
        "ETag": f.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if f.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
    if _etag_matches(request.headers.get("if-none-match"), f.etag):
        return Response(status_code=304, headers=headers)
    return Response(f.body, media_type=f.content_type, headers=headers)


def build(ctx: ApiContext | None = None, *, files: dict[str, StaticFile] | None = None) -> APIRouter:
    """Routes ``/`` and ``/static/{name}`` (the context is unused: the console is static)."""
    del ctx
    static = files if files is not None else load_static()
    if "index.html" not in static:
        raise RuntimeError("citybrain.console: static/index.html is missing from the package data")
    router = APIRouter(include_in_schema=False)

    # The page and its scripts hold no data (the login form shows until GET /api/v1/session
    # answers 200); every data call they make is to a route that requires a permission.
    @router.get("/", dependencies=[Depends(public("console page: login form, no data"))])
    async def index(request: Request) -> Response:
        return respond(request, static["index.html"])

    @router.get("/static/{name}", dependencies=[Depends(public("console scripts and styles, no data"))])
    async def static_file(name: str, request: Request) -> Response:
        f = static.get(name)
        if f is None:
            raise HTTPException(404, "no such console file")
        return respond(request, f)

    return router
