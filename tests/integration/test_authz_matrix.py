"""The endpoint × role table: docs/security.md, the app's declared rules, and the live answers agree.

1. Every route of :func:`citybrain.api.create_api` (webhook included) declares exactly one
   rule (``require(permission)`` or ``public(reason)``), and the generated table equals the
   one in docs/security.md, row for row — a route added, removed or re-permissioned without
   the docs fails here.
2. For every protected endpoint and every role, a real principal (an API key on the real
   PostgreSQL) gets 403 exactly where the table has no ✓; anonymous callers get 401.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.api import create_api
from citybrain.security.identities import ROLES
from citybrain.security.policy import TABLE_BEGIN, TABLE_END, RouteRule, markdown_table, route_rules
from core.topics import KafkaTopics
from devices.models import ModelRegistry
from ingest.kafka_sink import KafkaSinkConfig
from tests.integration.helpers import PATH_ALERT, PATH_DEVICE, PATH_VALUES, api_key, create_topics, serve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def _app(database_url: str, models: ModelRegistry, bootstrap: str, topics: KafkaTopics) -> FastAPI:
    # As served in production with the NB-IoT webhook mounted (it needs a Kafka sink).
    return create_api(
        database_url,
        models,
        CollectorRegistry(),
        ingest=KafkaSinkConfig(bootstrap, topics, partitions=1, source="webhook"),
        webhook_token="matrix-token",
    )


def _docs_table() -> str:
    text = DOCS.read_text(encoding="utf-8")
    assert TABLE_BEGIN in text and TABLE_END in text, "docs/security.md lost the route-table markers"
    return text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip() + "\n"


def test_every_route_declares_a_rule_and_the_docs_table_is_exact(
    database_url: str, models: ModelRegistry, kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    rules = route_rules(_app(database_url, models, kafka_bootstrap, topics))
    assert {r.path for r in rules} >= {"/api/v1/devices", "/api/v1/alerts/stream", "/api/v1/ingest/webhook/{platform}"}
    # Only these are open: probes, the scrape, the console page, login/logout, the token-checked webhook, docs.
    assert {r.path for r in rules if r.permission is None} == {
        "/",
        "/static/{name}",
        "/healthz",
        "/metrics",
        "/api/v1/session",
        "/api/v1/ingest/webhook/{platform}",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/docs/assets/{name}",
        "/asyncapi.yaml",
    }
    assert _docs_table() == markdown_table(rules), (
        "docs/security.md's endpoint × role table is out of date; regenerate it with "
        "`python -m citybrain.security.route_table` and review the change"
    )


@dataclass
class Live:
    url: str
    keys: dict[str, dict[str, str]]
    rules: list[RouteRule]


@pytest.fixture
async def live(
    database_url: str, models: ModelRegistry, kafka_bootstrap: str, topics: KafkaTopics
) -> AsyncIterator[Live]:
    await create_topics(kafka_bootstrap, [topics.raw, topics.deadletter])
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await conn.execute(
                "insert into devices (code, model, device_class, name, district, state)"
                " values (%s, 'air-station@1', 'air', 'matrix', '350203', 'active')",
                (PATH_DEVICE,),
            )
            await conn.execute(
                "insert into alerts (id, rule, device_code, district, device_class, severity, state, opened_at)"
                " values (%s, 'air.pm25.high', %s, '350203', 'air', 3, 'open', now())",
                (PATH_ALERT, PATH_DEVICE),
            )
        keys = {role: await api_key(pool, role) for role in ROLES}
    finally:
        await pool.close()
    app = _app(database_url, models, kafka_bootstrap, topics)
    rules = route_rules(app)
    async with serve(app) as url:
        yield Live(url, keys, rules)


async def _status(client: httpx.AsyncClient, rule: RouteRule, headers: dict[str, str]) -> int:
    path = rule.path.format(**PATH_VALUES)
    body = {} if rule.method in ("POST", "PATCH", "PUT") else None
    # Streamed, so that the SSE feed answers with its status line and is then closed.
    async with client.stream(rule.method, path, headers=headers, json=body) as response:
        return response.status_code


async def test_role_by_endpoint_matrix_over_http(live: Live) -> None:
    wrong: list[str] = []
    asked = 0
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        for rule in live.rules:
            if rule.method == "HEAD":
                continue
            if rule.permission is not None:
                anonymous = await _status(client, rule, {})
                if anonymous != 401:
                    wrong.append(f"{rule.method} {rule.path} anonymous -> {anonymous}, want 401")
            for role in ROLES:
                status = await _status(client, rule, live.keys[role])
                asked += 1
                denied = status == 403
                # A public route may answer 401 on its own terms (logout without a session, the webhook's token).
                if denied == rule.allows(role) or (status == 401 and rule.permission is not None):
                    want = "not 403" if rule.allows(role) else "403"
                    wrong.append(f"{rule.method} {rule.path} as {role} -> {status}, want {want}")
        # The probes and the scrape stay open to anonymous callers.
        for path in ("/healthz", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
    assert asked >= 60 * len(ROLES)
    assert not wrong, "\n".join(wrong)
