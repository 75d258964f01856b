"""Operator features of the alerts API on real PostgreSQL: texts, severity order, shelving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citybrain.routes import alerts as alert_routes
from citybrain.routes.context import ApiContext
from devices.code import DeviceCode
from devices.models import ModelRegistry
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration

DEV = DeviceCode.build("350203", "0308", 1).full
T0 = datetime(2026, 5, 1, 1, 24, 25, tzinfo=UTC)  # 09:24:25 in Asia/Shanghai


@dataclass
class Env:
    client: httpx.AsyncClient
    pool: AsyncConnectionPool
    auditor: dict[str, str]


async def _seed(pool: AsyncConnectionPool) -> None:
    rows = [
        # (id, rule, severity, opened_at, metric, value, threshold, labels)
        ("w1", "anomaly.rate", 2, T0 + timedelta(minutes=3), "temperature", 0.065, 0.05, {"detail": "up"}),
        ("c1", "air.pm25.high", 4, T0 + timedelta(minutes=1), "pm25", 230.0, 75.0, {}),
        (
            "w2",
            "anomaly.robust_z",
            2,
            T0 + timedelta(minutes=2),
            "pm25",
            104.2345,
            6.0,
            {
                "score": "24.01",
                "baseline": "35.1",
                "threshold": "6",
                "detail": "up",
                "window_start": "2026-05-01T01:00:00Z",
                "window_end": "2026-05-01T01:24:25Z",
            },
        ),
        ("m1", "air.aqi.polluted", 3, T0, "aqi", 160.0, 100.0, {}),
    ]
    async with pool.connection() as conn:
        await conn.execute(
            "insert into devices (code, model, device_class, name, district, state)"
            " values (%s, 'air-station@1', 'air', 'station', '350203', 'active')",
            (DEV,),
        )
        for aid, rule, sev, opened, metric, value, thr, labels in rows:
            await conn.execute(
                "insert into alerts (id, rule, device_code, district, device_class, severity, state, opened_at,"
                " metric, value, threshold, message, labels) values (%s,%s,%s,'350203','air',%s,'open',%s,%s,%s,%s,"
                " 'raw message',%s)",
                (aid, rule, DEV, sev, opened, metric, value, thr, Jsonb(labels)),
            )
        await conn.commit()


@pytest.fixture
async def env(database_url: str, models: ModelRegistry) -> AsyncIterator[Env]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        await _seed(pool)
        app = FastAPI()
        app.include_router(alert_routes.build(ApiContext(pool=pool, models=models, registry=CollectorRegistry())))
        secure(app, pool)
        headers = await api_key(pool, "operator", name="duty9")
        auditor = await api_key(pool, "auditor")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as client:
            yield Env(client, pool, auditor)
    finally:
        await pool.close()


async def test_alerts_carry_rendered_texts_in_zh_and_en_with_local_time(env: Env) -> None:
    a = (await env.client.get("/api/v1/alerts/w2")).json()
    # The record's stable fields stay for machines.
    assert (a["rule"], a["metric"], a["message"]) == ("anomaly.robust_z", "pm25", "raw message")
    zh, en = a["texts"]["zh-CN"], a["texts"]["en"]
    assert zh["title"] == "数据突变（稳健Z分数）" and en["title"] == "Sudden change (robust z-score)"
    # 01:00Z–01:24:25Z is 09:00–09:24:25 in Asia/Shanghai; numbers rounded; no rule id, no "Z".
    assert zh["text"] == (
        "数据突变（稳健Z分数）：PM2.5 104.23 µg/m³偏高，异常评分 24.01 超过 6"
        "（基线 35.1 µg/m³，时段 2026-05-01 09:00:00–2026-05-01 09:24:25）"
    )
    assert "robust_z" not in en["text"] and "Z" not in en["text"].replace("z-score", "")
    c = (await env.client.get("/api/v1/alerts/c1")).json()
    assert c["texts"]["zh-CN"]["text"] == "颗粒物浓度超标：PM2.5 230 µg/m³，阈值 75 µg/m³（2026-05-01 09:25:25 起）"


async def test_sort_by_severity_puts_critical_first(env: Env) -> None:
    by_time = (await env.client.get("/api/v1/alerts")).json()["items"]
    assert [a["id"] for a in by_time] == ["w1", "w2", "c1", "m1"]  # critical between warnings
    by_sev = (await env.client.get("/api/v1/alerts", params={"sort": "severity"})).json()["items"]
    assert [a["id"] for a in by_sev] == ["c1", "m1", "w1", "w2"]
    major_up = (await env.client.get("/api/v1/alerts", params={"sort": "severity", "severity": "major"})).json()
    assert [a["id"] for a in major_up["items"]] == ["c1", "m1"]
    assert (await env.client.get("/api/v1/alerts", params={"sort": "loudest"})).status_code == 422


async def test_shelving_with_expiry_and_reason_is_audited_and_expires(env: Env) -> None:
    c = env.client
    # A reason and an expiry are required.
    assert (await c.post("/api/v1/alerts/w1/shelve", json={"duration_s": 3600})).status_code == 422
    assert (await c.post("/api/v1/alerts/w1/shelve", json={"reason": "x"})).status_code == 422
    assert (await c.post("/api/v1/alerts/w1/shelve", json={"reason": "x", "duration_s": 30 * 86400})).status_code == 422
    far = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    assert (await c.post("/api/v1/alerts/w1/shelve", json={"reason": "x", "until": far})).status_code == 409
    past = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    assert (await c.post("/api/v1/alerts/w1/shelve", json={"reason": "x", "until": past})).status_code == 409
    r = await c.post("/api/v1/alerts/w1/shelve", json={"reason": "传感器校准中", "duration_s": 3600})
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["shelved"] is True and a["state"] == "open" and a["shelved_reason"] == "传感器校准中"
    assert a["shelved_by"] == "duty9" and a["history"][-1]["action"] == "shelve"
    # Filters: shelved alerts can be hidden or listed alone.
    not_shelved = (await c.get("/api/v1/alerts", params={"shelved": "false"})).json()["items"]
    assert "w1" not in [x["id"] for x in not_shelved]
    assert [x["id"] for x in (await c.get("/api/v1/alerts", params={"shelved": "true"})).json()["items"]] == ["w1"]
    # Read-only roles cannot shelve; a resolved alert cannot be shelved.
    denied = await c.post("/api/v1/alerts/w2/shelve", json={"reason": "x", "duration_s": 600}, headers=env.auditor)
    assert denied.status_code == 403
    assert (await c.post("/api/v1/alerts/m1/resolve", json={})).status_code == 200
    assert (await c.post("/api/v1/alerts/m1/shelve", json={"reason": "x", "duration_s": 600})).status_code == 409
    # Audited with the reason and the expiry.
    async with env.pool.connection() as conn:
        row = await (
            await conn.execute(
                "select actor, details from audit_log where action = 'alert.shelve' and resource = 'alert/w1'"
                " and outcome <> 'failure'"
            )
        ).fetchone()
    assert row is not None and row[0] == "duty9"
    assert row[1]["comment"] == "传感器校准中" and row[1]["until"].startswith(str((a["shelved_until"])[:16]))

    # Expiry: once shelved_until has passed, the alert is back to normal on the next read.
    async with env.pool.connection() as conn:
        await conn.execute("update alerts set shelved_until = now() - interval '1 second' where id = 'w1'")
    back = (await c.get("/api/v1/alerts/w1")).json()
    assert back["shelved"] is False and back["shelved_until"] is None and back["state"] == "open"
    assert back["history"][-1]["action"] == "unshelve" and back["history"][-1]["actor"] == "system"
    # Unshelve early.
    assert (await c.post("/api/v1/alerts/w2/shelve", json={"reason": "维护", "duration_s": 600})).status_code == 200
    assert (await c.post("/api/v1/alerts/w2/unshelve", json={})).json()["shelved"] is False
    assert (await c.post("/api/v1/alerts/w2/unshelve", json={})).status_code == 409
