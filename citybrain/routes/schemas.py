"""Schema routes: the JSON Schemas of every payload and the AsyncAPI document (``readings:read``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response

from citybrain.routes.context import ApiContext
from citybrain.security.auth import require
from citybrain.security.identities import Principal
from streams import schemas

__all__ = ["ASYNCAPI_PATH", "build", "served_asyncapi"]

# docs/ is not a package: the document is read from the source tree, which is
# how citybrain is installed (`pip install -e`); see build() for a wheel.
ASYNCAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
_REF_RE = re.compile(r"\.\./streams/schemas/([A-Za-z0-9_.-]+)\.json")


def served_asyncapi(text: str) -> str:
    """The AsyncAPI document with schema references pointing at this API."""
    return _REF_RE.sub(lambda m: f"/api/v1/schemas/{m.group(1)}", text)


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
_Reader = Annotated[Principal, Depends(require("readings:read"))]


def build(ctx: ApiContext) -> APIRouter:
    """Routes /api/v1/schemas, /api/v1/schemas/{name} and /asyncapi.yaml."""
    router = APIRouter()

    @router.get("/api/v1/schemas", tags=["schemas"])
    async def list_schemas(_: _Reader) -> dict[str, Any]:
        """Names, titles and URLs of the payload schemas."""
        return {
            "items": [
                {"name": n, "title": schemas.load(n).get("title"), "url": f"/api/v1/schemas/{n}"}
                for n in schemas.names()
            ],
            "asyncapi": "/asyncapi.yaml",
        }

    @router.get("/api/v1/schemas/{name}", tags=["schemas"])
    async def get_schema(name: str, _: _Reader) -> Response:
        """One JSON Schema (draft 2020-12); ``name`` with or without ``.json``."""
        key = name.removesuffix(".json")
        try:
            doc = schemas.load(key)
        except schemas.SchemaNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return Response(json.dumps(doc, ensure_ascii=False, indent=2), media_type="application/schema+json")

    @router.get("/asyncapi.yaml", tags=["schemas"])
    async def asyncapi(_: _Reader) -> Response:
        """The AsyncAPI 3.0 document of every MQTT and Kafka topic."""
        try:
            text = ASYNCAPI_PATH.read_text(encoding="utf-8")
        except OSError as exc:
            raise HTTPException(404, "docs/asyncapi.yaml is not installed with this build") from exc
        return Response(served_asyncapi(text), media_type="application/yaml")

    return router
