"""District scoping, masking by grade and audit on the whole API (real PostgreSQL, real uvicorn for SSE).

An operator granted 思明区 (350203) sees and acts only on 350203's devices, readings and
alerts — in the REST API and in the SSE feed; one object outside the grant is a 404, lists
are filtered. A downstream ``app`` sees public data only (contacts, owners and the exact
places of gas manholes masked); an admin sees everything, and those reads are audited.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citybrain.api import create_api
from citybrain.security.audit import AuditLog
from devices.code import DeviceCode
from devices.models import ModelRegistry
from streams.normalise import Row
from streams.store import ReadingStore, StoreMetrics
from tests.integration.helpers import api_key, await_for, serve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SIMING, HULI = "350203", "350206"
AIR_SM = DeviceCode.build(SIMING, "0308", 1).full
AIR_HL = DeviceCode.build(HULI, "0308", 2).full
GAS_SM = DeviceCode.build(SIMING, "0111", 3).full  # 燃气井盖: location graded sensitive
GAS_AT = (118.1012, 24.4567)
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Env:
    url: str
    pool: AsyncConnectionPool
    operator: dict[str, str]  # operator granted 350203 only
    integrator: dict[str, str]  # integrator granted 350203 only
    app: dict[str, str]  # downstream app, no grants
    admin: dict[str, str]


async def _seed(pool: AsyncConnectionPool, models: ModelRegistry) -> None:
    async with pool.connection() as conn:
        async with conn.cursor() as cur:
            await cur.executemany(
                "insert into devices (code, model, device_class, name, district, lon, lat, state, contact,"
                " owner_unit, attributes) values (%s, %s, %s, %s, %s, %s, %s, 'active', %s, %s, %s)",
                [
                    (AIR_SM, "air-station@1", "air", "siming air", SIMING, 118.10, 24.46, None, None, Jsonb({})),
                    (AIR_HL, "air-station@1", "air", "huli air", HULI, 118.12, 24.51, None, None, Jsonb({})),
                    (
                        GAS_SM,
                        "manhole-cover@1",
                        "manhole",
                        "gas cover",
                        SIMING,
                        *GAS_AT,
                        "13800138000",
                        "Xiamen Gas Co.",
                        Jsonb({"owner_contact": "13900139000", "depth_m": 2.0}),
                    ),
                ],
            )
            await cur.executemany(
                "insert into alerts (id, rule, device_code, district, device_class, severity, state, opened_at)"
                " values (%s, 'air.pm25.high', %s, %s, 'air', 3, 'open', %s)",
                [("a-sm", AIR_SM, SIMING, NOW), ("a-hl", AIR_HL, HULI, NOW)],
            )
        await conn.commit()
    store = ReadingStore(pool, models, StoreMetrics(CollectorRegistry()))
    t = NOW - timedelta(minutes=1)
    store.add("air", [Row(AIR_SM, t, t, {"pm25": 35.0}), Row(AIR_HL, t, t, {"pm25": 80.0})])
    store.add("manhole", [Row(GAS_SM, t, t, {"tilt": 1.5, "rssi": -85.0})])
    await store.flush()


@pytest.fixture
async def env(database_url: str, models: ModelRegistry) -> AsyncIterator[Env]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        await _seed(pool, models)
        keys = {
            "operator": await api_key(pool, "operator", districts=(SIMING,), name="op-siming"),
            "integrator": await api_key(pool, "integrator", districts=(SIMING,), name="int-siming"),
            "app": await api_key(pool, "app", name="app-1"),
            "admin": await api_key(pool, "admin", name="root"),
        }
        async with serve(create_api(database_url, models, CollectorRegistry())) as url:
            yield Env(url, pool, **keys)
    finally:
        await pool.close()


async def test_operator_sees_and_acts_only_in_its_district(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, headers=env.operator, timeout=20) as c:
        devices = (await c.get("/api/v1/devices")).json()
        assert {d["code"] for d in devices["items"]} == {AIR_SM, GAS_SM} and devices["total"] == 2
        assert (await c.get("/api/v1/devices", params={"district": HULI})).json()["items"] == []
        # Outside the grant looks exactly like unknown: 404, never 403.
        unknown = await c.get(f"/api/v1/devices/{DeviceCode.build(HULI, '0308', 99).full}")
        outside = await c.get(f"/api/v1/devices/{AIR_HL}")
        assert unknown.status_code == outside.status_code == 404
        for path in (
            f"/api/v1/devices/{AIR_HL}/latest",
            f"/api/v1/devices/{AIR_HL}/history",
            f"/api/v1/devices/{AIR_HL}/commands",
            "/api/v1/alerts/a-hl",
        ):
            assert (await c.get(path)).status_code == 404, path
        r = await c.get("/api/v1/readings", params={"device": AIR_HL, "metric": "pm25"})
        assert r.status_code == 404
        assert (await c.get(f"/api/v1/devices/{AIR_SM}/latest")).json()["metrics"]["pm25"]["value"] == 35.0

        latest = (await c.get("/api/v1/readings/latest", params={"class": "air", "within_minutes": 60})).json()
        assert [i["device"] for i in latest["items"]] == [AIR_SM]
        rows = await c.get(
            "/api/v1/readings/rows",
            params={"class": "air", "from": (NOW - timedelta(hours=1)).isoformat(), "to": NOW.isoformat()},
        )
        assert {i["device"] for i in rows.json()["items"]} == {AIR_SM}
        alerts = (await c.get("/api/v1/alerts")).json()
        assert [a["id"] for a in alerts["items"]] == ["a-sm"]
        points = (await c.get("/api/v1/geo/devices")).json()
        assert {f["id"] for f in points["features"]} == {AIR_SM, GAS_SM}
        districts = (await c.get("/api/v1/geo/districts")).json()
        assert [f["properties"]["code"] for f in districts["features"]] == [SIMING]

        # Acting outside the grant: 404 and nothing changes; inside: done, with the principal as actor.
        r = await c.post("/api/v1/alerts/a-hl/ack", json={"actor": "someone else", "comment": "x"})
        assert r.status_code == 404
        r = await c.post("/api/v1/alerts/a-sm/ack", json={"actor": "someone else", "comment": "on it"})
        assert r.status_code == 200 and r.json()["state"] == "acknowledged"
        assert r.json()["history"][-1]["actor"] == "op-siming"
        r = await c.post(f"/api/v1/devices/{AIR_HL}/commands", json={"name": "set_interval", "params": {}})
        assert r.status_code == 404
        window = {"starts_at": NOW.isoformat(), "ends_at": (NOW + timedelta(hours=1)).isoformat()}
        assert (await c.post("/api/v1/maintenance", json=window)).status_code == 403  # city-wide: not for a scoped op
        assert (await c.post("/api/v1/maintenance", json=window | {"district": HULI})).status_code == 403
        assert (await c.post("/api/v1/maintenance", json=window | {"district": SIMING})).status_code == 201

    async with httpx.AsyncClient(base_url=env.url, headers=env.admin, timeout=20) as c:
        assert (await c.get("/api/v1/alerts/a-hl")).json()["state"] == "open"
        audit = (await c.get("/api/v1/audit", params={"actor": "op-siming"})).json()["items"]
        assert [(e["action"], e["resource"]) for e in reversed(audit)] == [
            ("alert.ack", "alert/a-sm"),
            ("maintenance.create", f"maintenance/{audit[0]['resource'].split('/')[1]}"),
        ]


async def test_integrator_writes_only_in_its_district(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, headers=env.integrator, timeout=20) as c:
        assert (await c.patch(f"/api/v1/devices/{AIR_HL}", json={"name": "x"})).status_code == 404
        assert (
            await c.post(f"/api/v1/devices/{AIR_HL}/transitions", json={"to": "suspended", "reason": "x"})
        ).status_code == 404
        assert (await c.delete(f"/api/v1/devices/{AIR_HL}")).status_code == 404
        assert (await c.post(f"/api/v1/devices/{AIR_HL}/credentials")).status_code == 404
        new = {"code": DeviceCode.build(HULI, "0308", 50).full, "model": "air-station"}
        assert (await c.post("/api/v1/devices", json=new)).status_code == 403
        body = {"district": HULI, "class_code": "0308", "count": 1}
        assert (await c.post("/api/v1/device-codes", json=body)).status_code == 403
        r = await c.patch(f"/api/v1/devices/{AIR_SM}", json={"name": "renamed"})
        assert r.status_code == 200 and r.json()["name"] == "renamed"
        r = await c.post("/api/v1/devices", json=new | {"code": DeviceCode.build(SIMING, "0308", 51).full})
        assert r.status_code == 201, r.text
    async with env.pool.connection() as conn:
        # A device registered to be brought up is captured for the debug view from the start.
        cur = await conn.execute("select code, until, started_by from debug_captures")
        ((code, until, by),) = await cur.fetchall()
    assert code == DeviceCode.build(SIMING, "0308", 51).full and by == "register:int-siming"
    # The API's clock, as this process's (not the database's): both move under faketime.
    assert timedelta(hours=23) < until - datetime.now(UTC) <= timedelta(hours=24)
    log = AuditLog(env.pool)
    assert [(e.action, e.actor) for e in reversed(await log.query(actor="int-siming"))] == [
        ("device.update", "int-siming"),
        ("device.create", "int-siming"),
    ]


async def _events(url: str, headers: dict[str, str], out: list[dict[str, Any]], ready: asyncio.Event) -> None:
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(10, read=60)) as c,
        c.stream("GET", "/api/v1/alerts/stream") as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith(": connected"):
                ready.set()
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))


async def test_sse_feed_is_scoped(env: Env) -> None:
    got_op: list[dict[str, Any]] = []
    got_admin: list[dict[str, Any]] = []
    ready_op, ready_admin = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(_events(env.url, env.operator, got_op, ready_op)),
        asyncio.create_task(_events(env.url, env.admin, got_admin, ready_admin)),
    ]
    try:
        await asyncio.wait_for(asyncio.gather(ready_op.wait(), ready_admin.wait()), 15)
        async with httpx.AsyncClient(base_url=env.url, headers=env.admin, timeout=20) as c:
            for alert_id in ("a-hl", "a-sm", "a-hl"):
                r = await c.post(f"/api/v1/alerts/{alert_id}/comment", json={"comment": f"note {alert_id}"})
                assert r.status_code == 200
        assert await await_for(lambda: len(got_admin) >= 3, timeout=15), got_admin
        await asyncio.sleep(0.5)  # the operator's feed had the same time to receive the others
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [e["id"] for e in got_admin] == ["a-hl", "a-sm", "a-hl"]
    assert [e["id"] for e in got_op] == ["a-sm"]
    assert got_op[0]["actor"] == "root"


async def test_masking_by_grade_and_audit_of_sensitive_reads(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, headers=env.app, timeout=20) as c:
        gas = (await c.get(f"/api/v1/devices/{GAS_SM}")).json()
        assert gas["contact"] == "*******8000" and gas["owner_unit"] is None
        assert gas["attributes"] == {"owner_contact": "*******9000", "depth_m": 2.0}
        assert (gas["lon"], gas["lat"]) != GAS_AT and abs(gas["lon"] - GAS_AT[0]) < 0.02
        assert set(gas["masked"]) == {
            "attributes.owner_contact",
            "contact",
            "location",
            "owner_unit",
            "created_by",
            "updated_by",
        }
        air = (await c.get(f"/api/v1/devices/{AIR_SM}")).json()
        assert (air["lon"], air["lat"]) == (118.10, 24.46) and "location" not in air["masked"]  # not sensitive
        listed = {d["code"]: d for d in (await c.get("/api/v1/devices")).json()["items"]}
        assert listed[GAS_SM]["lon"] == gas["lon"] and listed[GAS_SM]["contact"] == "*******8000"
        csv = (await c.get("/api/v1/devices.csv")).text
        assert "13800138000" not in csv and "13900139000" not in csv and str(GAS_AT[0]) not in csv
        # rssi is graded internal: an app does not get it.
        latest = (await c.get(f"/api/v1/devices/{GAS_SM}/latest")).json()["metrics"]
        assert set(latest) == {"tilt"}
        r = await c.get("/api/v1/readings", params={"device": GAS_SM, "metric": "rssi"})
        assert r.status_code == 403
        assert (await c.get("/api/v1/geo/devices", params={"precise": "true"})).status_code == 403
        point = next(f for f in (await c.get("/api/v1/geo/devices")).json()["features"] if f["id"] == GAS_SM)
        assert point["properties"]["masked"] is True

    async with httpx.AsyncClient(base_url=env.url, headers=env.operator, timeout=20) as c:
        latest = (await c.get(f"/api/v1/devices/{GAS_SM}/latest")).json()["metrics"]
        assert set(latest) == {"tilt", "rssi"}  # operators read internal grades
        gas = (await c.get(f"/api/v1/devices/{GAS_SM}")).json()
        assert gas["owner_unit"] == "Xiamen Gas Co." and gas["contact"] == "*******8000"

    async with httpx.AsyncClient(base_url=env.url, headers=env.admin, timeout=20) as c:
        gas = (await c.get(f"/api/v1/devices/{GAS_SM}")).json()
        assert gas["contact"] == "13800138000" and (gas["lon"], gas["lat"]) == GAS_AT
        assert gas["attributes"]["owner_contact"] == "13900139000" and gas["masked"] == []
        precise = (await c.get("/api/v1/geo/devices", params={"precise": "true"})).json()
        assert next(f for f in precise["features"] if f["id"] == GAS_SM)["geometry"]["coordinates"] == list(GAS_AT)
        audit = (await c.get("/api/v1/audit", params={"action": "sensitive.*"})).json()["items"]
    assert [(e["actor"], e["resource"]) for e in reversed(audit)] == [
        ("root", f"device/{GAS_SM}"),
        ("root", "/api/v1/geo/devices"),
    ]
    assert audit[-1]["details"]["fields"] == ["attributes.owner_contact", "contact", "location"]
    assert audit[0]["details"]["devices"] == [GAS_SM]
