"""Map, vitals and geofence API on real PostgreSQL (devices inserted with SQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citybrain.routes import geo as geo_routes
from citybrain.routes import vitals as vitals_routes
from citybrain.routes.context import ApiContext
from citybrain.security.audit import AuditLog
from devices.code import DeviceCode, load_class_table
from devices.models import ModelRegistry
from geo.coords import wgs84_to_gcj02
from geo.service import GeoService
from streams.store import ensure_partition
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration


def code(district: str, class_code: str, seq: int) -> str:
    return DeviceCode.build(district, class_code, seq).full


AIR_SIMING = code("350203", "0308", 1)
AIR_HULI = code("350206", "0308", 2)
WATER_OK = code("350211", "0308", 3)
WATER_BAD = code("350211", "0308", 4)
GAS = code("350203", "0111", 5)  # sensitive: location published per grid cell
STORM = code("350203", "0103", 6)
STORM_OLD = code("350203", "0103", 7)
NOISE = code("350206", "0311", 8)
MICRO_SIMING = code("350203", "0308", 9)  # a micro-station: never sets an area AQI
GAS_AT = (118.1012, 24.4567)

SQUARE = [[118.09, 24.43], [118.11, 24.43], [118.11, 24.47], [118.09, 24.47], [118.09, 24.43]]


@dataclass
class Env:
    client: httpx.AsyncClient
    service: GeoService
    pool: AsyncConnectionPool
    admin: dict[str, str]


async def _seed(pool: AsyncConnectionPool, now: datetime) -> None:
    devices = [
        (AIR_SIMING, "air-station@1", "air", "350203", 118.10, 24.46, "WGS84"),
        (AIR_HULI, "air-station@1", "air", "350206", *wgs84_to_gcj02(118.12, 24.51), "GCJ02"),
        (WATER_OK, "water-station@1", "water", "350211", 118.05, 24.60, "WGS84"),
        (WATER_BAD, "water-station@1", "water", "350211", 118.051, 24.601, "WGS84"),
        (GAS, "manhole-cover@1", "manhole", "350203", *GAS_AT, "WGS84"),
        (STORM, "manhole-cover@1", "manhole", "350203", 118.1005, 24.4605, "WGS84"),
        (STORM_OLD, "manhole-cover@1", "manhole", "350203", 118.13, 24.48, "WGS84"),
        (NOISE, "noise-monitor@1", "noise", "350206", 118.125, 24.515, "WGS84"),
        (MICRO_SIMING, "air-micro@1", "air", "350203", 118.101, 24.56, "WGS84"),
    ]
    async with pool.connection() as conn:
        async with conn.cursor() as cur:
            await cur.executemany(
                "insert into devices (code, model, device_class, name, district, lon, lat, crs, state)"
                " values (%s, %s, %s, 'dev ' || %s, %s, %s, %s, %s, 'active')",
                [(c, m, k, c, d, x, y, crs) for c, m, k, d, x, y, crs in devices],
            )
            await cur.executemany(
                "insert into device_liveness values (%s, %s, %s)",
                [
                    (AIR_SIMING, now, now),
                    (AIR_HULI, now - timedelta(minutes=5), now),  # 5 min at a 60 s cadence: stale
                    (WATER_OK, now, now),
                    (WATER_BAD, now, now),
                    (STORM_OLD, now - timedelta(days=2), now),  # offline (cadence 1 h)
                    (NOISE, now - timedelta(seconds=10), now),
                    (MICRO_SIMING, now, now),
                ],
            )
            t = now.timestamp()
            await cur.executemany(
                "insert into rule_state (device_code, snapshot) values (%s, %s)",
                [
                    (AIR_SIMING, Jsonb({"aqi": [120.4, t, None, None], "pm25": [90.0, t, None, None]})),
                    (AIR_HULI, Jsonb({"aqi": [42.0, t, None, None], "pm25": [20.0, t, None, None]})),
                    # The old "highest device" rule turned Siming and the city to 215 with this one.
                    (MICRO_SIMING, Jsonb({"aqi": [215.0, t, None, None], "pm25": [180.0, t, None, None]})),
                    (WATER_OK, Jsonb({"water_class_over_target": [0.0, t, None, None]})),
                    (WATER_BAD, Jsonb({"water_class_over_target": [2.0, t, None, None]})),
                ],
            )
            await cur.executemany(
                "insert into alerts (id, rule, device_code, district, device_class, severity, state, opened_at)"
                " values (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    ("a1", "manhole.gas", GAS, "350203", "manhole", 4, "open", now),
                    ("a2", "noise.day.over_limit", NOISE, "350206", "noise", 2, "acknowledged", now),
                    ("a3", "noise.day.over_limit", NOISE, "350206", "noise", 2, "resolved", now - timedelta(days=3)),
                    ("a4", "air.pm25.high", AIR_SIMING, "350203", "air", 3, "resolved", now),
                ],
            )
            # Ingest: 3 messages received in the last minute (two from one device), one 5 minutes ago.
            await ensure_partition(conn, "air", now.date())
            await ensure_partition(conn, "air", (now - timedelta(minutes=10)).date())
            await cur.executemany(
                "insert into readings_air (device_code, ts, rx, pm25) values (%s, %s, %s, 1)",
                [
                    (AIR_SIMING, now - timedelta(seconds=20), now - timedelta(seconds=19)),
                    (AIR_SIMING, now - timedelta(seconds=40), now - timedelta(seconds=39)),
                    (AIR_HULI, now - timedelta(seconds=30), now - timedelta(seconds=29)),
                    (AIR_HULI, now - timedelta(minutes=5), now - timedelta(minutes=5)),
                ],
            )
        await conn.commit()


@pytest.fixture
async def env(database_url: str, models: ModelRegistry) -> AsyncIterator[Env]:
    async with _environment(database_url, models, datetime.now(UTC)) as e:
        yield e


@asynccontextmanager
async def _environment(database_url: str, models: ModelRegistry, now: datetime) -> AsyncIterator[Env]:
    """The seeded API; data is seeded relative to ``now`` and the API reads ``now`` as its clock."""
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        await _seed(pool, now)
        classes = load_class_table()
        service = GeoService(pool, sensitive_classes=[c for c in classes.minors if classes.is_sensitive(c)])
        ctx = ApiContext(pool=pool, models=models, registry=CollectorRegistry(), clock=lambda: now)
        app = FastAPI()
        app.include_router(geo_routes.build(ctx, service))
        app.include_router(vitals_routes.build(ctx))
        secure(app, pool)
        # An integrator maps and edits fences; precise locations of sensitive devices need an admin.
        headers = await api_key(pool, "integrator", name="alice")
        admin = await api_key(pool, "admin")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as client:
            yield Env(client, service, pool, admin)
    finally:
        await pool.close()


def _fence(fid: str, coords: list[list[float]], **kw: Any) -> dict[str, Any]:
    return {
        "id": fid,
        "name": f"fence {fid}",
        "kind": "school_zone",
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        **kw,
    }


async def test_fence_crud_and_assignment(env: Env) -> None:
    c = env.client
    r = await c.post("/api/v1/geo/fences", json=_fence("xmu-school", SQUARE, created_by="mallory"))
    assert r.status_code == 201, r.text
    body = r.json()
    # The creator is the authenticated principal ("alice"), whatever the body says.
    assert body["repaired"] is None and body["created_by"] == "alice" and body["kind"] == "school_zone"

    assert (await c.post("/api/v1/geo/fences", json=_fence("xmu-school", SQUARE))).status_code == 409
    got = (await c.get("/api/v1/geo/fences/xmu-school")).json()
    assert got["geometry"]["type"] == "Polygon" and got["properties"]["name"] == "fence xmu-school"
    listed = (await c.get("/api/v1/geo/fences", params={"bbox": "118.0,24.4,118.095,24.44"})).json()
    assert [f["id"] for f in listed["features"]] == ["xmu-school"]
    assert (await c.get("/api/v1/geo/fences", params={"bbox": "118.3,24.7,118.4,24.8"})).json()["features"] == []
    assert (await c.get("/api/v1/geo/fences", params={"kind": "flood_underpass"})).json()["features"] == []

    a = (await c.get("/api/v1/geo/assign", params={"lon": 118.10, "lat": 24.46})).json()
    assert a["district"] == "350203" and a["fences"] == ["xmu-school"] and len(a["grid"]) == 15

    assert (await c.delete("/api/v1/geo/fences/xmu-school")).status_code == 204
    assert (await c.get("/api/v1/geo/fences/xmu-school")).status_code == 404
    assert (await c.delete("/api/v1/geo/fences/xmu-school")).status_code == 404
    a = (await c.get("/api/v1/geo/assign", params={"lon": 118.10, "lat": 24.46})).json()
    assert a["fences"] == []
    entries = await AuditLog(env.pool).query(action="fence.*")
    assert [(e.actor, e.action, e.resource) for e in reversed(entries)] == [
        ("alice", "fence.create", "fence/xmu-school"),
        ("alice", "fence.delete", "fence/xmu-school"),
    ]
    # An operator reads fences but may not edit them.
    operator = await api_key(env.pool, "operator")
    assert (await c.get("/api/v1/geo/fences", headers=operator)).status_code == 200
    assert (await c.post("/api/v1/geo/fences", json=_fence("op", SQUARE), headers=operator)).status_code == 403


async def test_invalid_polygons_get_a_clear_422(env: Env) -> None:
    c = env.client
    r = await c.post("/api/v1/geo/fences", json=_fence("open", SQUARE[:4]))
    assert r.status_code == 422
    assert "fence open: polygon, ring 0 is not closed" in r.json()["detail"]

    bow = [[118.09, 24.43], [118.11, 24.45], [118.11, 24.43], [118.09, 24.45], [118.09, 24.43]]
    r = await c.post("/api/v1/geo/fences", params={"repair": "false"}, json=_fence("bow", bow))
    assert r.status_code == 422 and "Self-intersection" in r.json()["detail"]
    r = await c.post("/api/v1/geo/fences", json=_fence("bow", bow))
    assert r.status_code == 201 and r.json()["repaired"].startswith("Self-intersection")
    assert r.json()["geometry"]["type"] == "MultiPolygon"

    far = [[100.0, 30.0], [100.1, 30.0], [100.1, 30.1], [100.0, 30.1], [100.0, 30.0]]
    r = await c.post("/api/v1/geo/fences", json=_fence("far", far))
    assert r.status_code == 422 and "outside every district" in r.json()["detail"]

    r = await c.get("/api/v1/geo/assign", params={"lon": 118.6, "lat": 24.4})
    assert r.status_code == 422 and "outside every district; nearest is" in r.json()["detail"]


async def test_gcj02_fence_is_stored_in_wgs84(env: Env) -> None:
    gcj = [list(wgs84_to_gcj02(x, y)) for x, y in SQUARE]
    r = await env.client.post("/api/v1/geo/fences", json=_fence("gcj", gcj, crs="GCJ02"))
    assert r.status_code == 201, r.text
    ring = r.json()["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx((118.09, 24.43, 118.11, 24.47), abs=1e-7)
    assert r.json()["crs"] == "GCJ02"


async def test_import_is_all_or_nothing(env: Env) -> None:
    c = env.client

    def feature(fid: str, coords: list[list[float]]) -> dict[str, Any]:
        return {"type": "Feature", "properties": {"id": fid}, "geometry": {"type": "Polygon", "coordinates": [coords]}}

    other = [[118.12, 24.50], [118.13, 24.50], [118.13, 24.51], [118.12, 24.51], [118.12, 24.50]]
    bad = {"type": "FeatureCollection", "features": [feature("u1", SQUARE), feature("u2", other[:3])]}
    r = await c.post("/api/v1/geo/fences/import", params={"kind": "flood_underpass"}, json=bad)
    assert r.status_code == 422
    assert r.json()["detail"]["errors"] == [
        "fence u2: polygon, ring 0 has 3 positions; a ring needs at least 4 (3 corners + closing position)"
    ]
    assert (await c.get("/api/v1/geo/fences")).json()["features"] == []

    good = {"type": "FeatureCollection", "features": [feature("u1", SQUARE), feature("u2", other)]}
    r = await c.post("/api/v1/geo/fences/import", params={"kind": "flood_underpass"}, json=good)
    assert r.status_code == 200 and r.json()["imported"] == 2
    kinds = {f["id"]: f["properties"]["kind"] for f in (await c.get("/api/v1/geo/fences")).json()["features"]}
    assert kinds == {"u1": "flood_underpass", "u2": "flood_underpass"}
    assert (await c.post("/api/v1/geo/fences/import", json=good)).status_code == 409
    r = await c.post("/api/v1/geo/fences/import", params={"replace": "true"}, json=good)
    assert r.status_code == 200


async def test_districts_collection(env: Env) -> None:
    fc = (await env.client.get("/api/v1/geo/districts")).json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 6
    props = {f["properties"]["code"]: f["properties"] for f in fc["features"]}
    siming = props["350203"]
    assert siming["name_zh"] == "思明区" and siming["devices"] == 5 and siming["open_alerts"] == 1
    # HJ 633-2026 on the assessment station alone (the micro-station's 180 does not count):
    # PM2.5 90 → (150 − 100) / (115 − 60) × (90 − 60) + 100 = 127.27 → 128.
    assert (siming["aqi"], siming["aqi_level"], siming["aqi_colour"]) == (128, 3, "#FF7E00")
    # Huli: PM2.5 20 → 50 / 35 × 20 = 28.57 → 29.
    assert props["350206"]["aqi"] == 29 and props["350206"]["open_alerts"] == 1
    assert props["350211"]["water_ok_share"] == 0.5 and props["350211"]["aqi"] is None
    assert props["350212"] == props["350212"] | {"devices": 0, "aqi": None, "water_ok_share": None}


async def test_grid_of_one_district(env: Env) -> None:
    fc = (await env.client.get("/api/v1/geo/grid", params={"district": "350203"})).json()
    assert fc["features"] and all(f["properties"]["district"] == "350203" for f in fc["features"])
    assert all(f["properties"]["code"].startswith("350203") for f in fc["features"])
    assert (await env.client.get("/api/v1/geo/grid", params={"district": "350299"})).status_code == 422


async def test_devices_bbox_status_and_masking(env: Env) -> None:
    c = env.client
    fc = (await c.get("/api/v1/geo/devices", params={"bbox": "118.0,24.4,118.2,24.55"})).json()
    by_code = {f["properties"]["code"]: f for f in fc["features"]}
    assert set(by_code) == {AIR_SIMING, AIR_HULI, GAS, STORM, STORM_OLD, NOISE}
    status = {k: f["properties"]["status"] for k, f in by_code.items()}
    assert status == {
        AIR_SIMING: "fresh",
        AIR_HULI: "stale",
        GAS: "alerting",
        STORM: "unknown",
        STORM_OLD: "offline",
        NOISE: "alerting",  # an acknowledged alert is not resolved
    }
    # GCJ-02 stored device comes out in WGS84.
    assert by_code[AIR_HULI]["geometry"]["coordinates"] == pytest.approx([118.12, 24.51], abs=1e-7)
    gas = by_code[GAS]
    assert gas["properties"]["masked"] is True
    assert gas["geometry"]["coordinates"] != list(GAS_AT)
    assert by_code[STORM]["properties"]["masked"] is False
    assert by_code[STORM]["geometry"]["coordinates"] == [118.1005, 24.4605]

    # A tiny box around the true position must not reveal the gas cover.
    tiny = "118.1011,24.4566,118.1013,24.4568"
    assert (await c.get("/api/v1/geo/devices", params={"bbox": tiny})).json()["features"] == []
    # True positions are graded sensitive: 403 without sensitive:read, audited with it.
    assert (await c.get("/api/v1/geo/devices", params={"bbox": tiny, "precise": "true"})).status_code == 403
    precise = (await c.get("/api/v1/geo/devices", params={"bbox": tiny, "precise": "true"}, headers=env.admin)).json()
    assert [f["geometry"]["coordinates"] for f in precise["features"]] == [list(GAS_AT)]

    only_air = (await c.get("/api/v1/geo/devices", params={"class": "air", "district": "350206"})).json()
    assert [f["properties"]["code"] for f in only_air["features"]] == [AIR_HULI]
    assert (await c.get("/api/v1/geo/devices", params={"class": "boat"})).status_code == 422
    assert (await c.get("/api/v1/geo/devices", params={"bbox": "1,2,3"})).status_code == 422
    limited = (await c.get("/api/v1/geo/devices", params={"limit": 2})).json()
    assert limited["truncated"] is True and len(limited["features"]) == 2


async def test_nearest(env: Env) -> None:
    r = await env.client.get("/api/v1/geo/nearest", params={"lon": 118.1, "lat": 24.46, "class": "manhole", "k": 2})
    features = r.json()["features"]
    assert [f["properties"]["code"] for f in features] == [STORM, GAS]
    d = [f["properties"]["distance_m"] for f in features]
    assert 70 < d[0] < 80 and d[0] <= d[1]
    assert features[1]["properties"]["masked"] is True
    precise = await env.client.get(
        "/api/v1/geo/nearest",
        params={"lon": GAS_AT[0], "lat": GAS_AT[1], "class": "manhole", "k": 1, "precise": "true"},
        headers=env.admin,
    )
    assert precise.json()["features"][0]["properties"]["distance_m"] == 0.0


async def test_aggregate(env: Env) -> None:
    r = await env.client.get("/api/v1/geo/aggregate", params={"metric": "pm25", "class": "air"})
    items = {i["area"]: i for i in r.json()["items"]}
    # The per-metric aggregate is over every device of the class, micro-stations included.
    assert (items["350203"]["mean"], items["350203"]["devices"], items["350206"]["mean"]) == (135.0, 2, 20.0)
    grid = await env.client.get("/api/v1/geo/aggregate", params={"metric": "aqi", "class": "air", "level": "grid"})
    assert grid.json()["items"] == []  # seeded devices have no grid cell
    manholes = await env.client.get("/api/v1/geo/aggregate", params={"metric": "water_level_state", "class": "manhole"})
    by_area = {i["area"]: i for i in manholes.json()["items"]}
    assert by_area["350203"] == by_area["350203"] | {"devices": 3, "reporting": 0, "mean": None, "open_alerts": 1}
    bad = await env.client.get("/api/v1/geo/aggregate", params={"metric": "pm25", "class": "water"})
    assert bad.status_code == 422 and "not a metric of class 'water'" in bad.json()["detail"]


async def test_area_aqi_is_the_same_in_vitals_map_and_api(env: Env) -> None:
    """City: PM2.5 mean of the two assessment stations (90 + 20) / 2 = 55 → 50 / 25 × 20 + 50 = 90.

    The micro-station (180) is counted as such and left out; header, map and API agree.
    """
    api = (await env.client.get("/api/v1/geo/aqi")).json()
    assert api["version"] == "HJ633-2026"
    assert api["city"] | {"aqi": 90, "aqi_level": 2, "stations": 2, "micro_stations": 1} == api["city"]
    assert api["city"]["means"] == {"pm25": 55.0} and api["city"]["primary_pollutants"] == ["pm25"]
    v = (await env.client.get("/api/v1/vitals")).json()
    fc = (await env.client.get("/api/v1/geo/districts")).json()
    on_map = {f["properties"]["code"]: f["properties"]["aqi"] for f in fc["features"]}
    assert v["aqi"]["city"] == api["city"]["aqi"] == 90
    assert v["aqi"]["districts"] == on_map == {code: d["aqi"] for code, d in api["districts"].items()}
    assert on_map["350203"] == 128 and api["districts"]["350203"]["micro_stations"] == 1
    devices = (await env.client.get("/api/v1/geo/devices", params={"class": "air"})).json()["features"]
    roles = {f["properties"]["code"]: f["properties"]["assessment"] for f in devices}
    assert roles == {AIR_SIMING: True, AIR_HULI: True, MICRO_SIMING: False}


async def test_vitals(env: Env) -> None:
    await _check_vitals(env)


async def test_vitals_measure_liveness_from_the_injected_clock(database_url: str, models: ModelRegistry) -> None:
    """Receive times are the ingest side's clock: "how long ago" is from the API's clock, not the database's."""
    async with _environment(database_url, models, datetime(2026, 11, 29, 8, 0, tzinfo=UTC)) as env:
        await _check_vitals(env)


async def _check_vitals(env: Env) -> None:
    v = (await env.client.get("/api/v1/vitals")).json()
    assert v["aqi"]["city"] == 90 and v["aqi"]["districts"]["350206"] == 29 and v["aqi"]["districts"]["350212"] is None
    assert v["water"] == {"ok_share": 0.5, "stations": 2}
    assert v["noise"]["exceedances_today"] == 1
    assert v["manhole"] == {"open_alerts": 1}
    assert v["devices"] == {"online": 5, "stale": 1, "offline": 1, "unknown": 2, "total": 9}
    # Messages, not devices: AIR_SIMING's two messages count twice; the one 5 minutes ago not at all.
    assert v["ingest"]["messages_last_minute"] == 3
    assert v["alerts"]["open_by_severity"] == {"info": 0, "warning": 1, "major": 0, "critical": 1}


async def test_a_shelved_alert_neither_counts_in_the_tiles_nor_colours_the_map(env: Env) -> None:
    """An operator silenced the critical gas alert: the header, the districts and the map stop showing it.

    A shelving that has expired (``shelved_until`` passed, not yet cleared by a read of the
    alerts API) counts again. Without the filter the gas alert stayed critical in the vitals,
    the district's open alerts and the cover's "alerting" dot (issue 18, shelving).
    """
    async with env.pool.connection() as conn:
        await conn.execute(
            "update alerts set shelved_until = now() + interval '1 hour', shelved_reason = '现场核查中',"
            " shelved_by = 'duty1' where id = 'a1'"
        )
        await conn.execute("update alerts set shelved_until = now() - interval '1 second' where id = 'a2'")
        await conn.commit()
    v = (await env.client.get("/api/v1/vitals")).json()
    assert v["alerts"]["open_by_severity"] == {"info": 0, "warning": 1, "major": 0, "critical": 0}
    assert v["manhole"] == {"open_alerts": 0}
    districts = (await env.client.get("/api/v1/geo/districts")).json()["features"]
    props = {f["properties"]["code"]: f["properties"] for f in districts}
    assert props["350203"]["open_alerts"] == 0 and props["350206"]["open_alerts"] == 1
    devices = (await env.client.get("/api/v1/geo/devices")).json()["features"]
    status = {f["properties"]["code"]: f["properties"]["status"] for f in devices}
    assert status[GAS] != "alerting" and status[NOISE] == "alerting"
    manholes = await env.client.get("/api/v1/geo/aggregate", params={"metric": "water_level_state", "class": "manhole"})
    assert {i["area"]: i["open_alerts"] for i in manholes.json()["items"]}["350203"] == 0


async def test_track_many_emits_debounced_enter_and_leave(env: Env) -> None:
    c = env.client
    assert (await c.post("/api/v1/geo/fences", json=_fence("zone", SQUARE))).status_code == 201
    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    s15, m1, m2 = timedelta(seconds=15), timedelta(minutes=1), timedelta(minutes=2)
    svc, dev = env.service, "35020307010000011"
    async with env.pool.connection() as conn, conn.transaction():
        # One fix inside is not enough (default: 2 fixes over 10 s).
        assert await svc.track_many(conn, [(dev, 118.10, 24.44, t0)]) == []
    async with env.pool.connection() as conn, conn.transaction():
        events = await svc.track_many(conn, [(dev, 118.101, 24.441, t0 + s15)])
    assert [(e.kind, e.fence_id, e.at) for e in events] == [("enter", "zone", t0)]
    async with env.pool.connection() as conn, conn.transaction():
        assert await svc.track_many(conn, [(dev, 118.101, 24.441, t0 + s15)]) == []  # replay
        # Jitter on the western edge (±5 m of lon 118.09) never leaves.
        jitter = [(dev, 118.09 + (-1) ** i * 4.5e-5, 24.44, t0 + m1 + i * s15) for i in range(8)]
        assert await svc.track_many(conn, jitter) == []
        events = await svc.track_many(conn, [(dev, 118.2, 24.6, t0 + m1 * 5), (dev, 118.2, 24.6, t0 + m1 * 5 + m2)])
    assert [(e.kind, e.fence_id, e.at, e.entered_at) for e in events] == [("leave", "zone", t0 + m1 * 5, t0)]
    async with env.pool.connection() as conn:
        row = await (await conn.execute("select fences from device_fences where device_code = %s", (dev,))).fetchone()
    assert row == ([],)


async def test_registration_assigns_the_grid_cell_and_refuses_wrong_places(database_url: str, models) -> None:  # type: ignore[no-untyped-def]
    from psycopg_pool import AsyncConnectionPool

    from devices.errors import LedgerError
    from devices.ledger import Ledger, NewDevice
    from geo.assign import Assigner
    from geo.districts import load_districts
    from geo.grid import Grid

    districts = load_districts()
    assigner = Assigner(districts, Grid.build(districts))
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        ledger = Ledger(pool, models, assigner=assigner)
        # 思明区 (350203) near Zhongshan Road
        info = await ledger.register(NewDevice("35020303080000012", "air-station", lon=118.08, lat=24.46))
        assert info.district == "350203" and info.grid is not None and info.grid.startswith("350203")
        with pytest.raises(LedgerError, match="outside every district"):
            await ledger.register(NewDevice("35020303080000020", "air-station", lon=118.6, lat=24.9))
        with pytest.raises(LedgerError, match=r"in district 350203 \(思明区\), but its code says 350206"):
            await ledger.register(NewDevice("35020603080000017", "air-station", lon=118.08, lat=24.46))
        # Moving it: the new cell is assigned; a move into another district is refused.
        moved = await ledger.update(info.code, {"lon": 118.10, "lat": 24.44}, actor="t")
        assert moved["grid"] == assigner.assign(118.10, 24.44).grid_cell != info.grid
        with pytest.raises(LedgerError, match=r"in district 350206 \(湖里区\), but its code says 350203"):
            await ledger.update(info.code, {"lon": 118.12, "lat": 24.51}, actor="t")
        assert (await ledger.get(info.code))["lon"] == 118.10
    finally:
        await pool.close()
