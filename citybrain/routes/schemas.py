"""Schema routes: the JSON Schemas of every payload (``readings:read``) and the AsyncAPI document (public)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, HTTPException, Response

from citybrain.routes.context import ApiContext
from citybrain.security.auth import public, require
from citybrain.security.identities import Principal
from streams import schemas

__all__ = ["ASYNCAPI_PATH", "build", "bundled_asyncapi"]

# docs/ is not a package: the document is read from the source tree, which is
# how citybrain is installed (`pip install -e`); see build() for a wheel.
ASYNCAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
_REF_RE = re.compile(r"^\.\./streams/schemas/([A-Za-z0-9_.-]+)\.json$")


def _inline_defs(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``#/$defs/x`` reference replaced by the definition itself.

    Inlined into the AsyncAPI document, a schema's local references would resolve
    against the document's root, not the schema's, so they are expanded here (the
    shipped schemas' definitions are not recursive).
    """
    if isinstance(node, list):
        return [_inline_defs(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**_inline_defs(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]), defs), **rest}
    return {k: _inline_defs(v, defs) for k, v in node.items()}


def _bundle(node: Any) -> Any:
    if isinstance(node, list):
        return [_bundle(x) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    match = _REF_RE.match(ref) if isinstance(ref, str) else None
    if match:
        doc = schemas.load(match.group(1))
        defs = doc.pop("$defs", {})
        doc.pop("$id", None)  # its base URI would re-root every reference below it
        return _inline_defs(doc, defs)
    return {k: _bundle(v) for k, v in node.items()}


def bundled_asyncapi(text: str) -> str:
    """The AsyncAPI document as one self-contained file: every payload schema inlined.

    docs/asyncapi.yaml refers to the schema files beside it; a downloaded copy has
    no such neighbours, so standard tools (the AsyncAPI parser, generators) get
    the schemas in the document itself.
    """
    doc = _bundle(yaml.safe_load(text))
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=120)


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

    @router.get("/asyncapi.yaml", tags=["schemas"], dependencies=[Depends(public("the topics' shape, no data"))])
    async def asyncapi() -> Response:
        """The AsyncAPI 3.0 document of every MQTT and Kafka topic, with its schemas inlined."""
        try:
            text = ASYNCAPI_PATH.read_text(encoding="utf-8")
        except OSError as exc:
            raise HTTPException(404, "docs/asyncapi.yaml is not installed with this build") from exc
        return Response(bundled_asyncapi(text), media_type="application/yaml")

    return router
