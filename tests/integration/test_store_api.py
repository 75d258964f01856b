"""Read API on real PostgreSQL: buckets (raw and rollup agree), pages, exports, stats, schemas, 422s."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.routes import readings, schemas, stats
from citybrain.routes.context import ApiContext
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from streams.normalise import Row
from streams.retention import maintenance
from streams.store import ReadingStore, StoreMetrics
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration

CODES = ["35020603080000017", "35020603080000025"]
# Data is built relative to the day the test runs, and the API reads an injected
# clock 25 hours after T0: no assertion depends on today's date.
T0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
NOW = T0 + timedelta(days=1, hours=1)


@pytest.fixture
async def client(database_url: str, models: ModelRegistry) -> AsyncIterator[httpx.AsyncClient]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        ledger = Ledger(pool, models)
        for code in CODES:
            await ledger.register(NewDevice(code, "air-station"))
        rng = np.random.default_rng(11)
        store = ReadingStore(pool, models, StoreMetrics(CollectorRegistry()))
        for code in CODES:
            rows = []
            for i in range(24 * 60):  # one day, one row a minute
                t = T0 + timedelta(minutes=i)
                bad = rng.random() < 0.03
                rows.append(
                    Row(code, t, t, {"pm25": float(rng.gamma(4, 10))}, {"pm25": "bad"} if bad else {}, 2 if bad else 0)
                )
            store.add("air", rows)
        await store.flush()
        async with pool.connection() as conn:
            await maintenance(conn, models, NOW, retention_days=30)
            await conn.execute("insert into device_liveness values (%s, now(), now())", (CODES[0],))
            await conn.commit()
        ctx = ApiContext(pool=pool, models=models, registry=CollectorRegistry(), clock=lambda: NOW)
        app = FastAPI()
        for module in (readings, stats, schemas):
            app.include_router(module.build(ctx))
        secure(app, pool)
        headers = await api_key(pool, "app")  # a downstream app: readings:read, public grades only
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers) as c:
            yield c
    finally:
        await pool.close()


def _q(**kw: object) -> dict[str, str]:
    return {k.rstrip("_"): v.isoformat() if isinstance(v, datetime) else str(v) for k, v in kw.items()}


async def test_buckets_from_rollups_equal_buckets_from_raw(client: httpx.AsyncClient) -> None:
    base = {"device": CODES[0], "metric": "pm25", "from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}
    for bucket, rollup in (("15m", "rollup_5m"), ("3h", "rollup_1h"), ("1d", "rollup_1d")):
        auto = (await client.get("/api/v1/readings/buckets", params=base | {"bucket": bucket})).json()
        raw = (await client.get("/api/v1/readings/buckets", params=base | {"bucket": bucket, "source": "raw"})).json()
        assert auto["source"] == rollup and raw["source"] == "raw"
        assert len(auto["items"]) == len(raw["items"]) > 0
        for a, r in zip(auto["items"], raw["items"], strict=True):
            assert (a["ts"], a["count"], a["min"], a["max"]) == (r["ts"], r["count"], r["min"], r["max"])
            assert a["avg"] == pytest.approx(r["avg"], rel=1e-9)
    total = sum(i["count"] for i in auto["items"])
    assert 1300 < total < 1440  # bad values are left out


async def test_validation_gives_clear_422s(client: httpx.AsyncClient) -> None:
    base = {"device": CODES[0], "from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}
    r = await client.get("/api/v1/readings/buckets", params=base | {"metric": "nope"})
    assert r.status_code == 422 and "not a metric of class air" in r.json()["detail"]
    r = await client.get("/api/v1/readings/buckets", params=base | {"metric": "pm25", "bucket": "1s"})
    assert r.status_code == 422 and "at most" in r.json()["detail"]
    r = await client.get("/api/v1/readings/buckets", params=base | {"metric": "pm25", "bucket": "fortnight"})
    assert r.status_code == 422 and "bad bucket" in r.json()["detail"]
    swapped = {"device": CODES[0], "metric": "pm25", "from": base["to"], "to": base["from"]}
    r = await client.get("/api/v1/readings", params=swapped)
    assert r.status_code == 422 and "before" in r.json()["detail"]
    r = await client.get("/api/v1/readings/rows", params={"class": "lava", "from": base["from"], "to": base["to"]})
    assert r.status_code == 422


async def test_keyset_pages_cover_the_range_once(client: httpx.AsyncClient) -> None:
    params = {"class": "air", "from": T0.isoformat(), "to": (T0 + timedelta(hours=2)).isoformat(), "limit": "50"}
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        page = (await client.get("/api/v1/readings/rows", params=params | ({"after": after} if after else {}))).json()
        seen += [(i["ts"], i["device"]) for i in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 2 * 120
    assert seen == sorted(seen)
    # The single-device series pages the same way.
    one = {"device": CODES[1], "metric": "pm25", "from": params["from"], "to": params["to"], "limit": "100"}
    first = (await client.get("/api/v1/readings", params=one)).json()
    second = (await client.get("/api/v1/readings", params=one | {"after": first["next"]})).json()
    assert len(first["items"]) == 100 and len(second["items"]) == 20 and second["next"] is None


async def test_export_streams_ndjson_and_csv(client: httpx.AsyncClient) -> None:
    params = {
        "class": "air",
        "from": T0.isoformat(),
        "to": (T0 + timedelta(hours=12)).isoformat(),
        "district": "350206",
    }
    r = await client.get("/api/v1/readings/export", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert len(lines) == 2 * 720 and {x["device"] for x in lines} == set(CODES)
    r = await client.get("/api/v1/readings/export", params=params | {"format": "csv", "device": CODES[0]})
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == 720 and float(table[0]["pm25"]) > 0


async def test_latest_per_device_and_stats(client: httpx.AsyncClient) -> None:
    r = (await client.get("/api/v1/readings/latest", params={"class": "air", "within_minutes": "120"})).json()
    assert [i["device"] for i in r["items"]] == CODES
    last = (T0 + timedelta(days=1, minutes=-1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(i["ts"] == last for i in r["items"])
    r = (await client.get("/api/v1/stats/districts", params={"class": "air", "metric": "pm25", "minutes": "60"})).json()
    assert r["items"] == [{"district": "350206", "devices": 2, "reporting": 1, "mean": None, "values": 0}]
    r = (await client.get("/api/v1/stats/classes", params={"metric": "pm25"})).json()
    assert {"class": "air", "devices": 2, "reporting": 1, "mean": None, "values": 0} in r["items"]
    r = await client.get("/api/v1/stats/classes", params={"metric": "nope"})
    assert r.status_code == 422


async def test_schemas_are_served(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/api/v1/schemas")).json()
    assert {i["name"] for i in listing["items"]} >= {
        "telemetry.v1",
        "readings.v1",
        "alerts.v1",
        "deadletter-headers.v1",
    }
    r = await client.get("/api/v1/schemas/readings.v1")
    assert r.status_code == 200 and r.json()["title"].startswith("citybrain.readings")
    assert (await client.get("/api/v1/schemas/nope")).status_code == 404
    anonymous = client.build_request("GET", "/asyncapi.yaml")
    del anonymous.headers["x-api-key"]  # public: standard tools fetch it with no credentials
    r = await client.send(anonymous)
    assert r.status_code == 200 and "citybrain.alerts v1" in r.text and "$ref: ../" not in r.text
