"""The per-device debug view on real PostgreSQL: the worker's tables and the API route.

The recent-message ring and the dead-letter copy are written as the stream worker
writes them (:mod:`streams.debug`); the route is called over ASGI as real
principals. The whole path (MQTT → gateway → worker → dead letter → view) is in
``tests/e2e/test_console_integrator.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.routes import debug as debug_routes
from citybrain.routes.context import ApiContext
from core.records import RawMessage, Reading
from core.topics import uplink_topic
from devices.code import DeviceCode
from devices.models import ModelRegistry
from ingest.batch import dead_letter_headers
from streams.debug import (
    RING,
    DeadLetter,
    capture_until,
    prune_captures,
    prune_dead_letters,
    record_dead_letters,
    record_recent,
    start_capture,
)
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration

AIR = DeviceCode.build("350203", "0308", 11).full
GAS = DeviceCode.build("350203", "0129", 12).full  # oil/gas manhole cover: a sensitive class
T0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


@pytest.fixture
async def client(pool: AsyncConnectionPool, models: ModelRegistry) -> AsyncIterator[httpx.AsyncClient]:
    async with pool.connection() as conn:
        for code, model, cls in ((AIR, "air-station@1", "air"), (GAS, "manhole-cover@1", "manhole")):
            await conn.execute(
                "insert into devices (code, alias, model, device_class, name, district, state, created_by, updated_by)"
                " values (%s, %s, %s, %s, 't', %s, 'active', 't', 't')",
                (code, code[:16], model, cls, code[:6]),
            )
        await conn.execute("insert into device_sessions (code, connected, status_at) values (%s, true, %s)", (AIR, T0))
    app = FastAPI()
    secure(app, pool)
    app.include_router(debug_routes.build(ApiContext(pool=pool, models=models, registry=CollectorRegistry())))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        yield c


def _msg(code: str, i: int, payload: bytes) -> RawMessage:
    return RawMessage(uplink_topic(code), payload, T0 + timedelta(seconds=i))


def _dead(offset: int, code: str, reason: str, payload: bytes, topic: str = "t.deadletter") -> DeadLetter:
    headers = dead_letter_headers(
        reason, f"detail {offset}", uplink_topic(code), T0 + timedelta(seconds=offset), "stream-worker"
    )
    return DeadLetter(topic, 0, offset, payload, tuple(headers))


async def test_ring_of_recent_messages_with_readings_and_reject_reasons(
    pool: AsyncConnectionPool, client: httpx.AsyncClient
) -> None:
    async with pool.connection() as conn:
        for i in range(RING + 5):
            good = _msg(AIR, i, b'{"v":1,"metrics":{"pm25":%d}}' % i)
            reading = Reading(AIR, "pm25", good.received_at, good.received_at, float(i), "ug/m3")
            assert await record_recent(conn, [good], [reading], []) == 1
        bad = _msg(AIR, 100, b'{"v":1,"metrics":')
        await record_recent(conn, [bad], [], [(bad, "bad_json", "unexpected end")])
        # A batch with two messages of one device keeps the newest.
        older, newer = _msg(GAS, 1, b"\x01\x02"), _msg(GAS, 2, b"\x03\x04")
        assert await record_recent(conn, [newer, older], [], []) == 1
    admin = await api_key(pool, "admin")
    d = (await client.get(f"/api/v1/devices/{AIR}/debug?limit=100", headers=admin)).json()
    assert len(d["messages"]) == RING  # a ring: never more per device
    first = d["messages"][0]
    assert first["rejected"] == {"reason": "bad_json", "detail": "unexpected end"}
    assert first["payload"] == {"encoding": "text", "data": '{"v":1,"metrics":'}
    second = d["messages"][1]
    assert second["rejected"] is None and second["payload"] == {
        "encoding": "json",
        "data": {"v": 1, "metrics": {"pm25": 24}},
    }
    assert second["readings"][0]["metric"] == "pm25" and second["readings"][0]["value"] == 24.0
    assert [m["received_at"] for m in d["messages"]] == sorted((m["received_at"] for m in d["messages"]), reverse=True)
    assert d["session"] == {"connected": True, "status_at": "2026-11-29T00:00:00Z"}
    g = (await client.get(f"/api/v1/devices/{GAS}/debug", headers=admin)).json()
    assert [m["payload"] for m in g["messages"]] == [{"encoding": "hex", "data": "0304"}]


async def test_dead_letters_by_device_idempotent_and_pruned(
    pool: AsyncConnectionPool, client: httpx.AsyncClient
) -> None:
    records = [
        _dead(0, AIR, "bad_json", b"{"),
        _dead(1, AIR, "unknown_metric", b'{"v":1}'),
        _dead(2, GAS, "bad_frame", b"\xff"),
    ]
    async with pool.connection() as conn:
        assert await record_dead_letters(conn, records) == 3
        assert await record_dead_letters(conn, records) == 0  # the consumer re-read them: nothing twice
        # The same offsets of another topic (a new prefix, a recreated topic) are other records.
        assert await record_dead_letters(conn, [_dead(0, AIR, "too_large", b"x", topic="u.deadletter")]) == 1
        no_device = DeadLetter(
            "t.deadletter", 0, 9, b"?", tuple(dead_letter_headers("bad_topic", "", "foo/bar", T0, "mqtt-gateway"))
        )
        assert await record_dead_letters(conn, [no_device]) == 1
    admin = await api_key(pool, "admin")
    d = (await client.get(f"/api/v1/devices/{AIR}/debug", headers=admin)).json()
    # Newest first: unknown_metric (T0 + 1 s), then the two received at T0.
    assert d["dead_letters"][0]["reason"] == "unknown_metric"
    assert sorted(x["reason"] for x in d["dead_letters"]) == ["bad_json", "too_large", "unknown_metric"]
    assert {x["source"] for x in d["dead_letters"]} == {"stream-worker"}
    assert d["dead_letters"][0]["detail"].startswith("detail")
    async with pool.connection() as conn:
        assert await prune_dead_letters(conn, T0 + timedelta(days=7, seconds=1, microseconds=500_000), 7) == 4
        left = await (await conn.execute("select count(*) from dead_letters")).fetchone()
    assert left is not None and left[0] == 1  # the one received at T0 + 2 s


async def test_permission_district_scope_redaction_and_audit(
    pool: AsyncConnectionPool, client: httpx.AsyncClient
) -> None:
    async with pool.connection() as conn:
        await record_dead_letters(conn, [_dead(0, GAS, "bad_frame", b"\x01\x02secret-place")])
        gas = _msg(GAS, 0, b"\x01\x02")
        await record_recent(conn, [gas], [], [])
    integrator = await api_key(pool, "integrator")
    r = await client.get(f"/api/v1/devices/{GAS}/debug", headers=integrator)
    assert r.status_code == 200
    body = r.json()
    # A sensitive class without sensitive:read: reasons yes, payloads no.
    assert body["redacted"] is True and body["dead_letters"][0]["reason"] == "bad_frame"
    assert body["dead_letters"][0]["payload"] == {"encoding": "withheld", "data": None}
    assert "secret-place" not in r.text and body["messages"][0]["payload"]["encoding"] == "withheld"
    admin = await api_key(pool, "admin")
    shown = (await client.get(f"/api/v1/devices/{GAS}/debug", headers=admin)).json()
    assert shown["redacted"] is False and shown["dead_letters"][0]["payload"]["data"].endswith(b"secret-place".hex())

    assert (
        await client.get(f"/api/v1/devices/{AIR}/debug", headers=await api_key(pool, "operator"))
    ).status_code == 403
    other = await api_key(pool, "integrator", districts=("350206",))
    assert (await client.get(f"/api/v1/devices/{AIR}/debug", headers=other)).status_code == 404
    mine = await api_key(pool, "integrator", districts=("350203",))
    assert (await client.get(f"/api/v1/devices/{AIR}/debug", headers=mine)).status_code == 200
    assert (await client.get("/api/v1/devices/NOTACODE/debug", headers=admin)).status_code == 422
    async with pool.connection() as conn:
        n = await (await conn.execute("select count(*) from audit_log where action = 'device.debug'")).fetchone()
    assert n is not None and n[0] == 3


async def test_opening_the_view_captures_the_device_for_half_an_hour(
    pool: AsyncConnectionPool, models: ModelRegistry, client: httpx.AsyncClient
) -> None:
    clock = [T0]
    app = FastAPI()
    secure(app, pool)
    ctx = ApiContext(pool=pool, models=models, registry=CollectorRegistry(), clock=lambda: clock[0])
    app.include_router(debug_routes.build(ctx))
    admin = await api_key(pool, "admin")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        # Refused callers start nothing.
        assert (await c.get(f"/api/v1/devices/{AIR}/debug", headers=await api_key(pool, "operator"))).status_code == 403
        async with pool.connection() as conn:
            assert await capture_until(conn, AIR) is None
        d = (await c.get(f"/api/v1/devices/{AIR}/debug", headers=admin)).json()
        assert d["capture"] == {"until": "2026-11-29T00:30:00Z"}
        clock[0] = T0 + timedelta(minutes=10)  # viewed again: the capture runs 30 min from now
        d = (await c.get(f"/api/v1/devices/{AIR}/debug", headers=admin)).json()
        assert d["capture"] == {"until": "2026-11-29T00:40:00Z"}
    async with pool.connection() as conn:
        # A longer capture already there (a device registered today) is not shortened.
        await start_capture(conn, [AIR], T0 + timedelta(hours=24), "register:t")
        await start_capture(conn, [AIR], T0 + timedelta(minutes=50), "view:t")
        assert await capture_until(conn, AIR) == T0 + timedelta(hours=24)
        assert await prune_captures(conn, T0 + timedelta(hours=48)) == 0  # ended, but less than a day ago
        assert await prune_captures(conn, T0 + timedelta(hours=48, seconds=1)) == 1
