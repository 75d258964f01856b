"""Schema-driven fuzzing of the whole HTTP API: no input may produce a 5xx.

Schemathesis reads the app's own OpenAPI document and generates requests
(path, query, headers, bodies) that conform to it, plus hypothesis' edge
cases. The app is :func:`citybrain.api.create_api` on a fresh migrated
database, security routes included; it runs in-process (httpx's ASGI
transport; the test runs the lifespan), so no port and no server are needed.
Requests carry an admin API key, so that they reach the handlers instead of
stopping at the 401 of ``require()``.

Examples per operation: ``CITYBRAIN_API_FUZZ_EXAMPLES`` (default 6; ``make fuzz`` raises it).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.api import create_api
from devices.models import ModelRegistry
from tests.integration.helpers import api_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("CITYBRAIN_API_FUZZ_EXAMPLES", "6"))
# Server-Sent Events never end by design; a generated request would wait forever.
EXCLUDED = {("GET", "/api/v1/alerts/stream")}
# 5xx this test found earlier have regression tests below.
KNOWN_5XX: set[tuple[str, str]] = set()


def _app(database_url: str, models: ModelRegistry) -> FastAPI:
    # The whole HTTP surface as served, security routes included.
    return create_api(database_url, models, CollectorRegistry())


async def _admin(database_url: str) -> dict[str, str]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False)
    await pool.open(wait=True)
    try:
        return await api_key(pool, "admin")
    finally:
        await pool.close()


def _cases(operation: Any) -> list[Any]:
    # Hypothesis drives generation synchronously; the requests are sent afterwards on the
    # test's event loop (the app's pool lives there), so failures are reported unshrunk.
    out: list[Any] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def collect(case: Any) -> None:
        out.append(case)

    collect()
    return out


async def test_no_operation_answers_5xx(database_url: str, models: ModelRegistry) -> None:
    app = _app(database_url, models)
    failures: list[str] = []
    checked = sent = 0
    admin = await _admin(database_url)
    unauthenticated: set[str] = set()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://testserver"
        ) as client,
    ):
        schema = schemathesis.openapi.from_dict((await client.get("/openapi.json")).json())
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # an Err is a broken schema: let it raise
            if (operation.method.upper(), operation.path) in EXCLUDED:
                continue
            checked += 1
            for case in _cases(operation):
                kwargs = case.as_transport_kwargs(base_url="http://testserver")
                data = kwargs.get("data")
                response = await client.request(
                    kwargs["method"],
                    kwargs["url"],
                    params=kwargs.get("params"),
                    headers={**(kwargs.get("headers") or {}), **admin},
                    cookies=kwargs.get("cookies"),
                    json=kwargs.get("json"),
                    content=data if isinstance(data, bytes | str) else None,
                )
                sent += 1
                if response.status_code == 401 and operation.path != "/api/v1/session":  # logins may fail
                    unauthenticated.add(f"{case.method} {operation.path}")
                if response.status_code >= 500 and (case.method.upper(), operation.path) not in KNOWN_5XX:
                    failures.append(
                        f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.200}"
                        f" -> {response.status_code}: {response.text[:200]}"
                    )
                    break  # one example per operation is enough to report
    assert checked >= 40, "the schema lost operations?"
    assert sent >= checked
    assert not unauthenticated, f"the admin key did not authenticate: {sorted(unauthenticated)}"
    assert not failures, f"{len(failures)} operations answered 5xx:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/geo/districts", {"max_age_s": "1.6e16"}),
        # Found by `make fuzz`: an offset beyond bigint reached SQL (500).
        ("/api/v1/alerts", {"offset": "5018404392970591666176"}),
    ],
)
async def test_huge_numbers_are_a_4xx(
    database_url: str, models: ModelRegistry, path: str, params: dict[str, str]
) -> None:
    app = _app(database_url, models)
    admin = await _admin(database_url)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://testserver",
            headers=admin,
        ) as client,
    ):
        response = await client.get(path, params=params)
    assert 400 <= response.status_code < 500, response.text
