"""The ledger on real PostgreSQL: allocation under concurrency, lifecycle, credentials, REST."""

from __future__ import annotations

import asyncio
import threading

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.routes import devices as device_routes
from citybrain.routes import ledger as ledger_routes
from citybrain.routes.context import ApiContext
from devices.code import DeviceCode
from devices.credentials import verify_mosquitto, verify_secret
from devices.errors import TransitionError, UnknownDeviceError
from devices.ledger import DeviceQuery, Ledger, NewDevice, allocate_codes
from devices.models import ModelRegistry
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration


def test_concurrent_allocation_never_duplicates(database_url: str) -> None:
    # A code registered by hand beforehand: allocation must start above it.
    manual = DeviceCode.build("350206", "0308", 40)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into devices (code, alias, model, device_class, district) values (%s, %s, 'air-station@1', 'air',"
            " '350206')",
            (manual.full, manual.body),
        )
    got: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(k: int) -> None:
        try:
            with psycopg.connect(database_url) as conn:
                start.wait()
                mine = []
                for i in range(30):
                    n = 1 + (k + i) % 4  # single codes and small batches interleaved
                    mine += [c.full for c in allocate_codes(conn, "350206", "0308", n)]
                    conn.commit()
                got.append(mine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    codes = [c for mine in got for c in mine]
    assert len(codes) == len(set(codes))
    seqs = sorted(int(c[10:16]) for c in codes)
    assert seqs == list(range(41, 41 + len(codes)))  # dense, above the manual code


async def test_allocate_register_alias_lifecycle(pool: AsyncConnectionPool, models: ModelRegistry) -> None:
    ledger = Ledger(pool, models)
    code = await ledger.allocate_next("350211", "0701")
    assert code.sequence == 1
    batch = await ledger.allocate("350211", "0701", 3)
    assert [c.sequence for c in batch] == [2, 3, 4]
    info = await ledger.register(NewDevice(code.body, "smart-pole", serial="P-1"), actor="t")  # by its alias
    assert info.code == code.full and info.state == "registered"
    assert await ledger.lookup(code.body) == code.full

    with pytest.raises(TransitionError, match="already"):
        await ledger.transition(code.full, "registered", "x", actor="t")
    await ledger.transition(code.body, "active", "installed", actor="alice")
    await ledger.transition(code.full, "suspended", "maintenance", actor="bob")
    assert await ledger.commission([code.full, "35021107010000990"]) == {
        code.full: "device is suspended",
        "35021107010000990": "unknown device",
    }
    await ledger.transition(code.full, "active", "fixed", actor="bob")
    secret = await ledger.rotate_credentials(code.full, actor="t")
    row = await ledger.get(code.full)
    assert "secret_hash" not in row
    async with pool.connection() as conn:
        hashes = await (
            await conn.execute("select secret_hash, mosquitto_hash from devices where code = %s", (code.full,))
        ).fetchone()
    assert hashes is not None and verify_secret(secret, hashes[0]) and verify_mosquitto(secret, hashes[1])
    await ledger.transition(code.full, "decommissioned", "replaced", actor="carol")
    with pytest.raises(TransitionError, match="final state"):
        await ledger.transition(code.full, "active", "oops", actor="carol")
    with pytest.raises(TransitionError, match="decommissioned"):
        await ledger.rotate_credentials(code.full, actor="t")
    history = await ledger.history(code.full)
    assert [(h["from_state"], h["to_state"], h["actor"]) for h in history] == [
        (None, "registered", "t"),
        ("registered", "active", "alice"),
        ("active", "suspended", "bob"),
        ("suspended", "active", "bob"),
        ("active", "decommissioned", "carol"),
    ]
    async with pool.connection() as conn:
        gone = await (await conn.execute("select secret_hash from devices where code = %s", (code.full,))).fetchone()
    assert gone == (None,)
    with pytest.raises(UnknownDeviceError):
        await ledger.transition("35021107010000990", "active", "x", actor="t")


async def test_compact_index_loads_from_ledger(pool: AsyncConnectionPool, models: ModelRegistry) -> None:
    ledger = Ledger(pool, models)
    codes = [c.full for c in await ledger.allocate("350203", "0308", 5)]
    for c in codes:
        await ledger.register(NewDevice(c, "air-station", attributes={"sensor_vendor": "A"}))
    assert await ledger.activate(codes[:2]) == 2
    index = await ledger.load_compact_index()
    assert len(index) == 5
    assert [index.get(c).state for c in codes] == ["active", "active", "registered", "registered", "registered"]  # type: ignore[union-attr]
    assert index.get(codes[0]).attributes == {"sensor_vendor": "A"}  # type: ignore[union-attr]
    assert {d.code for d in await ledger.load_index()} == set(codes)


async def test_rest_crud_search_transitions_export(pool: AsyncConnectionPool, models: ModelRegistry) -> None:
    ctx = ApiContext(pool=pool, models=models, registry=CollectorRegistry())
    app = FastAPI()
    for module in (device_routes, ledger_routes):
        app.include_router(module.build(ctx))
    security = secure(app, pool)
    # An integrator manages devices but does not see contacts (graded sensitive).
    headers = await api_key(pool, "integrator")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client:
        assert (await client.get("/api/v1/devices", headers={"X-Api-Key": ""})).status_code == 401
        r = await client.post("/api/v1/device-codes", json={"district": "350206", "class_code": "0308", "count": 4})
        assert r.status_code == 201, r.text
        codes = r.json()["codes"]
        for i, c in enumerate(codes):
            r = await client.post(
                "/api/v1/devices",
                json={
                    "code": c,
                    "model": "air-micro",
                    "name": f"station {i}",
                    "lon": 118.0 + i * 0.1,
                    "lat": 24.5,
                    "contact": "13800138000",
                },
            )
            assert r.status_code == 201, r.text
        r = await client.get(f"/api/v1/devices/{codes[0]}")
        assert r.status_code == 200 and r.json()["contact"] == "*******8000"
        assert r.json()["masked"] == ["contact"]
        # An admin holds sensitive:read: the contact unmasked, and the read audited.
        r = await client.get(f"/api/v1/devices/{codes[0]}", headers=await api_key(pool, "admin", name="ada"))
        assert r.json()["contact"] == "13800138000" and r.json()["masked"] == []
        (entry,) = await security.audit.query(action="sensitive.read")
        assert (entry.actor, entry.resource, entry.details["fields"]) == ("ada", f"device/{codes[0]}", ["contact"])

        r = await client.get("/api/v1/devices", params={"class": "air", "limit": 3})
        page = r.json()
        assert page["total"] == 4 and len(page["items"]) == 3 and page["next_after"] == codes[2]
        assert all(item["contact"].startswith("***") for item in page["items"])
        r = await client.get("/api/v1/devices", params={"after": page["next_after"], "limit": 3})
        assert [d["code"] for d in r.json()["items"]] == [codes[3]]
        r = await client.get("/api/v1/devices", params={"bbox": "118.05,24.4,118.25,24.6"})
        assert [d["code"] for d in r.json()["items"]] == codes[1:3]
        r = await client.get("/api/v1/devices", params={"q": "station 3"})
        assert r.json()["total"] == 1
        r = await client.get("/api/v1/devices", params={"bbox": "x"})
        assert r.status_code == 422

        r = await client.patch(f"/api/v1/devices/{codes[0]}", json={"name": "renamed", "attributes": {"k": 1}})
        assert r.status_code == 200 and r.json()["name"] == "renamed" and r.json()["attributes"] == {"k": 1}
        r = await client.patch(f"/api/v1/devices/{codes[0]}", json={"model": "smart-pole"})
        assert r.status_code == 422 and "does not fit" in r.json()["detail"]
        r = await client.patch(f"/api/v1/devices/{codes[0]}", json={"state": "active"})
        assert r.status_code == 422

        r = await client.post(f"/api/v1/devices/{codes[0]}/transitions", json={"to": "suspended", "reason": "x"})
        assert r.status_code == 200 and r.json()["from"] == "registered"
        r = await client.post(f"/api/v1/devices/{codes[0]}/transitions", json={"to": "registered", "reason": "x"})
        assert r.status_code == 409 and "cannot go from suspended to registered" in r.json()["detail"]
        r = await client.delete(f"/api/v1/devices/{codes[1]}", params={"reason": "stolen"})
        assert r.status_code == 200 and r.json()["to"] == "decommissioned"
        r = await client.get(f"/api/v1/devices/{codes[1]}/history")
        assert [h["to_state"] for h in r.json()] == ["registered", "decommissioned"]
        r = await client.get("/api/v1/devices", params={"state": "decommissioned"})
        assert [d["code"] for d in r.json()["items"]] == [codes[1]]

        r = await client.post(f"/api/v1/devices/{codes[2]}/credentials")
        assert r.status_code == 201 and r.json()["username"] == codes[2] and len(r.json()["secret"]) >= 32
        assert r.headers["cache-control"] == "no-store"
        r = await client.post(f"/api/v1/devices/{codes[1]}/credentials")
        assert r.status_code == 409
        r = await client.delete(f"/api/v1/devices/{codes[2]}/credentials")
        assert r.status_code == 204
        r = await client.get("/api/v1/devices/35020603089999990/history")
        assert r.status_code == 404

        r = await client.get("/api/v1/devices.csv", params={"district": "350206"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        lines = r.text.strip().splitlines()
        assert lines[0].startswith("code,serial,district,class_code,model")
        assert "contact" not in lines[0] and len(lines) == 5 and "13800138000" not in r.text
        r = await client.get("/api/v1/models")
        assert r.status_code == 200

    # Every write is audited with the principal (not a body field) as actor.
    actions = [(e.action, e.actor.startswith("t-integrator-")) for e in reversed(await security.audit.query())]
    assert [a for a, _ in actions if a != "sensitive.read"] == [
        "device.allocate",
        *["device.create"] * 4,
        "device.update",
        "device.transition",
        "device.transition",
        "device.credentials_rotate",
        "device.credentials_revoke",
        "device.export",
    ]
    assert all(by_integrator for a, by_integrator in actions if a != "sensitive.read")
    history = await Ledger(pool, models).history(codes[0])
    assert len({h["actor"] for h in history}) == 1 and history[0]["actor"].startswith("t-integrator-")


async def test_allocation_is_safe_across_async_connections(pool: AsyncConnectionPool, models: ModelRegistry) -> None:
    ledger = Ledger(pool, models)
    results = await asyncio.gather(*(ledger.allocate("350212", "0103", 2) for _ in range(20)))
    codes = [c.full for batch in results for c in batch]
    assert len(set(codes)) == 40
    found = await ledger.search(DeviceQuery(district="350212"))
    assert found.total == 0  # allocation reserves codes; it registers nothing
