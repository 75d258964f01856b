"""The API's edge on the whole app (create_api, real PostgreSQL): issue 15, defects 5, 6 and 7.

* Every string parameter of every operation in the OpenAPI document (path, query,
  header), every JSON body, and the credential headers: a NUL answers 422 from the
  edge guard, never a 500 from PostgreSQL — for an admin and for a scoped operator.
* Every 403 is audited, whatever the path holds (escaped and cut).
* The anonymous login body is bounded (413), and a 422 does not echo the input back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.api import create_api
from citybrain.routes import commands as command_routes
from citybrain.routes.context import ApiContext
from citybrain.security.audit import AuditLog
from citybrain.security.guard import EdgeLimits
from core.topics import KafkaTopics
from devices.models import ModelRegistry
from ingest.kafka_sink import KafkaSinkConfig
from tests.integration.helpers import PATH_VALUES, api_key, secure

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TIMEOUT = httpx.Timeout(20.0)


@dataclass
class Edge:
    client: httpx.AsyncClient
    pool: AsyncConnectionPool
    admin: dict[str, str]
    operator: dict[str, str]
    app_key: dict[str, str]
    openapi: dict[str, Any]


@pytest.fixture
async def edge(
    database_url: str, models: ModelRegistry, kafka_bootstrap: str, topics: KafkaTopics
) -> AsyncIterator[Edge]:
    # As `citybrain api` serves it: the webhook mounted (its sink connects in the background).
    app = create_api(
        database_url,
        models,
        CollectorRegistry(),
        ingest=KafkaSinkConfig(kafka_bootstrap, topics, partitions=1, source="webhook"),
        webhook_token="edge-token",
        limits=EdgeLimits(),
    )
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        admin = await api_key(pool, "admin")
        operator = await api_key(pool, "operator", districts=("350203",))
        app_key = await api_key(pool, "app")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=TIMEOUT) as client,
        ):
            openapi = (await client.get("/openapi.json")).json()
            yield Edge(client, pool, admin, operator, app_key, openapi)
    finally:
        await pool.close()


def _is_string(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "string":
        return True
    return any(_is_string(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []))


def _string_params(openapi: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(method, path template, where, name) of every string parameter of every operation."""
    out = []
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                if _is_string(param.get("schema", {})):
                    out.append((method.upper(), path, param["in"], param["name"]))
    return out


def _body_operations(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in openapi["paths"].items()
        for method, op in item.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    ]


def _url(template: str, bad: str | None = None) -> str:
    values = {k: quote(v, safe="") for k, v in PATH_VALUES.items()}
    if bad is not None:
        values[bad] = "a%00b"
    return template.format(**values)


async def _send(
    client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], **kw: Any
) -> tuple[int, dict[str, Any]]:
    """Status and (for a 422) body; 0 if no answer came in time (an unguarded SSE feed never ends)."""
    try:
        response = await asyncio.wait_for(client.request(method, url, headers=headers, **kw), 10)
    except TimeoutError:
        return 0, {}
    return response.status_code, response.json() if response.status_code == 422 else {}


def _guarded(status: int, body: dict[str, Any], loc: list[str]) -> bool:
    errors = body.get("detail")
    if status != 422 or not isinstance(errors, list):
        return False
    return any(e.get("type") == "string_unstorable" and e["loc"][: len(loc)] == loc for e in errors)


async def test_a_nul_in_any_string_parameter_is_a_422_for_admin_and_scoped_operator(edge: Edge) -> None:
    params = _string_params(edge.openapi)
    # The four of the report, at least, are among them.
    assert {("GET", "/api/v1/devices", "query", "q"), ("GET", "/api/v1/alerts", "query", "device")} <= set(params)
    assert ("GET", "/api/v1/audit", "query", "actor") in params
    assert ("GET", "/api/v1/devices/{code}", "path", "code") in params
    wrong: list[str] = []
    for who, headers in (("admin", edge.admin), ("operator", edge.operator)):
        for method, path, where, name in params:
            extra: dict[str, Any] = {}
            req_headers = dict(headers)
            if where == "path":
                url = _url(path, bad=name)
                loc = ["path"]
            elif where == "query":
                url = _url(path)
                extra["params"] = {name: "a\x00b"}
                loc = ["query", name]
            else:
                url = _url(path)
                req_headers[name] = "a\x00b"
                loc = ["header", name.lower()]
            if method in ("POST", "PATCH", "PUT"):
                extra["json"] = {}
            status, body = await _send(edge.client, method, url, req_headers, **extra)
            if not _guarded(status, body, loc):
                wrong.append(f"{who} {method} {path} {where}:{name} -> {status} {body}")
    assert len(params) >= 40, "the OpenAPI document lost its parameters?"
    assert not wrong, f"{len(wrong)} NULs were not refused at the edge:\n" + "\n".join(wrong)


async def test_a_nul_in_any_json_body_or_credential_header_is_a_422(edge: Edge) -> None:
    operations = _body_operations(edge.openapi)
    assert ("POST", "/api/v1/devices") in operations and ("POST", "/api/v1/session") in operations
    wrong: list[str] = []
    for method, path in operations:
        body = {"name": "a\x00b", "nested": [{"k\x00": 1}]}
        status, answer = await _send(edge.client, method, _url(path), edge.admin, json=body)
        if not _guarded(status, answer, ["body"]):
            wrong.append(f"{method} {path} -> {status} {answer}")
    assert not wrong, "\n".join(wrong)
    # Header-derived strings: a NUL in the API key or the bearer token is refused too.
    for header in ({"X-Api-Key": "cbk_abcdefgh_\x00"}, {"Authorization": "Bearer a\x00b"}):
        status, answer = await _send(edge.client, "GET", "/api/v1/devices", header)
        assert _guarded(status, answer, ["header"]), (header, status, answer)


async def test_every_403_is_audited_whatever_the_path_holds(
    edge: Edge, database_url: str, models: ModelRegistry
) -> None:
    # On the whole app, an app key's forbidden command with a control character in the code.
    r = await edge.client.post(f"/api/v1/devices/{quote(chr(27) + '[31m')}/commands", headers=edge.app_key, json={})
    assert r.status_code == 403
    # Behind the edge guard a NUL never reaches require(); without it, require() must still audit.
    bare = FastAPI()
    bare.include_router(command_routes.build(ApiContext(edge.pool, models, CollectorRegistry())))
    secure(bare, edge.pool)
    transport = httpx.ASGITransport(app=bare, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.post("/api/v1/devices/%00/commands", headers=edge.app_key, json={})
        assert r.status_code == 403
        long_code = "x" * 500
        r = await client.post(f"/api/v1/devices/{long_code}/commands", headers=edge.app_key, json={})
        assert r.status_code == 403
    denied = [row for row in await AuditLog(edge.pool).query(action="authz.deny") if row.outcome == "denied"]
    resources = sorted(row.resource for row in denied)
    assert "POST /api/v1/devices/\\x00/commands" in resources, resources
    assert "POST /api/v1/devices/\\x1b[31m/commands" in resources, resources
    (cut,) = [r for r in resources if "xxxx" in r]
    assert len(cut) == 200 and cut.endswith("…")


async def test_the_login_body_is_bounded_and_errors_do_not_echo_it(edge: Edge) -> None:
    # 100 MB was answered 422 with the 100 MB echoed; the bound refuses it from Content-Length.
    r = await edge.client.post(
        "/api/v1/session",
        content=b'{"username": "' + b"u" * (20 * 1024 * 1024) + b'", "password": "p"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    r = await edge.client.post("/api/v1/session", json={"username": "u" * 10_000, "password": "x" * 12})
    assert r.status_code == 422
    assert len(r.content) < 1000, r.content[:300]
