"""Fence membership for rule scopes and fence alerts for mobile devices, on real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.engine import DeviceContext, evaluate_device
from alerts.geofence import GeofenceHook
from alerts.rules import RuleSet, parse_rules, shipped_rules
from alerts.store import AlertStore
from citybrain.routes import geo as geo_routes
from citybrain.routes.context import ApiContext
from core.records import RawMessage, Reading, Transport
from core.topics import KafkaTopics
from devices.code import DeviceCode
from devices.index import DeviceInfo
from devices.models import ModelRegistry
from geo import stats
from geo.coords import wgs84_to_gcj02
from geo.fences import FenceDraft, validate_fence
from geo.service import GeoService
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration

SCHOOL = [[118.09, 24.43], [118.11, 24.43], [118.11, 24.45], [118.09, 24.45], [118.09, 24.43]]
NOISE_IN = DeviceCode.build("350203", "0311", 1).full
NOISE_GCJ = DeviceCode.build("350203", "0311", 2).full
NOISE_OUT = DeviceCode.build("350203", "0311", 3).full
BUS = DeviceCode.build("350203", "0308", 4).full
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=3, open=False)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute(
            "insert into devices (code, model, device_class, name, district, lon, lat, crs, state) values"
            " (%s, 'noise-monitor@1', 'noise', 'in', '350203', 118.10, 24.44, 'WGS84', 'active'),"
            " (%s, 'noise-monitor@1', 'noise', 'gcj', '350203', %s, %s, 'GCJ02', 'active'),"
            " (%s, 'noise-monitor@1', 'noise', 'out', '350203', 118.13, 24.48, 'WGS84', 'active'),"
            " (%s, 'air-micro@1', 'air', 'bus', '350203', null, null, 'WGS84', 'active')",
            (NOISE_IN, NOISE_GCJ, *wgs84_to_gcj02(118.105, 24.445), NOISE_OUT, BUS),
        )
        await conn.commit()
    try:
        yield pool
    finally:
        await pool.close()


async def _add_fence(geo: GeoService, fid: str = "school-1") -> None:
    draft = FenceDraft(fid, "厦门一中", "school_zone", {"type": "Polygon", "coordinates": [SCHOOL]})
    await geo.create_fences([validate_fence(draft)], created_by="test")


async def test_fixed_devices_membership_follows_fences_and_ledger(pool: AsyncConnectionPool) -> None:
    geo = GeoService(pool)
    hook = GeofenceHook(pool, geo=geo, check_s=0)
    assert await hook.refresh() and hook.keys(NOISE_IN) == frozenset()
    assert not await hook.refresh()  # nothing changed: no reload
    await _add_fence(geo)
    assert await hook.refresh()
    assert hook.keys(NOISE_IN) == {"school-1", "name/厦门一中", "kind/school_zone"}
    assert hook.keys(NOISE_GCJ) == hook.keys(NOISE_IN)  # stored GCJ-02, converted before the test
    assert hook.keys(NOISE_OUT) == frozenset()

    # The shipped school-zone rule applies inside only.
    rules = shipped_rules().for_class("noise")
    for code, expected in ((NOISE_IN, ["noise.school_zone.day"]), (NOISE_OUT, [])):
        ctx = DeviceContext(code, "350203", "noise", fences=tuple(hook.keys(code)), attributes={"zone": "2"})
        out, _ = evaluate_device(rules, [Reading(code, "ld", T0, T0, 57.0, "dB(A)")], ctx, {}, {}, 0)
        assert [t.alert.rule for t in out] == expected

    # A device moved into the fence (ledger updated_at changes) is picked up.
    async with pool.connection() as conn:
        await conn.execute(
            "update devices set lon = 118.1, lat = 24.44, updated_at = now() where code = %s", (NOISE_OUT,)
        )
    assert await hook.refresh() and "school-1" in hook.keys(NOISE_OUT)
    await geo.delete_fence("school-1")
    assert await hook.refresh() and hook.keys(NOISE_IN) == frozenset()


async def test_mobile_device_enter_opens_and_leave_clears_a_fence_alert(pool: AsyncConnectionPool) -> None:
    geo = GeoService(pool, fence_check_s=0)
    await _add_fence(geo)
    hook = GeofenceHook(pool, geo=geo, check_s=0)  # no refresh(): track() does it in the transaction
    bus = DeviceInfo(BUS, "air-micro@1", "air", "350203", None, "active", {})
    store = AlertStore(pool)

    def fixes(lon: float, lat: float, *seconds: int) -> list[tuple[Reading, DeviceInfo]]:
        out = []
        for s in seconds:
            t = T0 + timedelta(seconds=s)
            out += [(Reading(BUS, "lon", t, t, lon, "deg"), bus), (Reading(BUS, "lat", t, t, lat, "deg"), bus)]
            out.append((Reading(BUS, "pm25", t, t, 30.0, "ug/m3"), bus))
        return out

    async def batch(readings: list[tuple[Reading, DeviceInfo]]) -> list[tuple[str, str]]:
        async with pool.connection() as conn, conn.transaction():
            transitions = await hook.track(conn, readings)
            changed = await store.apply(conn, transitions)
        return [(k, a.rule) for k, a in changed]

    assert await batch(fixes(118.10, 24.44, 0)) == []  # one fix: not yet
    assert set(hook.membership.fences) == {"school-1"}
    assert await batch(fixes(118.10, 24.44, 15, 30)) == [("open", "geofence.school-1")]
    assert hook.keys(BUS) == {"school-1", "name/厦门一中", "kind/school_zone"}  # rules see it at once
    async with pool.connection() as conn:
        # Being inside a fence is an event, not a problem: the map's open-alert figures skip it.
        assert await stats.open_by_severity(conn) == {}
        figures = await stats.district_figures(conn, max_age_s=3600)
        assert all(f.open_alerts == 0 for f in figures.values())
    assert await batch(fixes(118.10, 24.44, 15, 30)) == []  # replay
    assert await batch(fixes(118.2, 24.6, 600, 660)) == [("clear", "geofence.school-1")]
    assert hook.keys(BUS) == frozenset()
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "select state, opened_at, cleared_at, severity, labels from alerts where device_code = %s", (BUS,)
            )
        ).fetchall()
    assert len(rows) == 1
    state, opened, cleared, severity, labels = rows[0]
    assert (state, opened, cleared, severity) == ("resolved", T0, T0 + timedelta(seconds=600), 1)
    assert labels == {"kind": "geofence", "fence": "school-1", "fence_kind": "school_zone"}
    # A fresh hook (worker restart) finds the mobile device's stored membership.
    again = GeofenceHook(pool, geo=GeoService(pool), check_s=0)
    await again.refresh()
    assert again.keys(BUS) == frozenset()


FENCE_RULES = """
- id: test.school.noise
  class: noise
  scope: {fence: school-1}
  when: {metric: ld, op: ">", value: 55}
- id: test.school.pm25
  class: air
  scope: {fence: school-1}
  when: {metric: pm25, op: ">", value: 75}
"""


async def _sent(topic: str, key: bytes | None, value: bytes, headers: object = None) -> None:
    return None


def _worker(pool: AsyncConnectionPool, models: ModelRegistry, rules: RuleSet) -> Pipeline:
    reg = CollectorRegistry()
    return Pipeline(
        PipelineConfig(topics=KafkaTopics("t"), rules=rules),
        pool,
        models,
        _sent,
        PipelineMetrics(reg),
        ReadingStore(pool, models, StoreMetrics(reg)),
        clock=lambda: T0 + timedelta(hours=1),  # the data's "now", whatever today's date
    )


def _open_alerts(pool_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(pool_url) as conn:
        rows = conn.execute("select device_code, rule from alerts where state = 'open' order by 1, 2").fetchall()
    return [(str(c), str(r)) for c, r in rows]


async def test_the_worker_applies_a_fence_scoped_rule_only_inside_the_fence(
    pool: AsyncConnectionPool, database_url: str, models: ModelRegistry
) -> None:
    await _add_fence(GeoService(pool))
    worker = _worker(pool, models, RuleSet(parse_rules(FENCE_RULES)))
    loud = [
        RawMessage(f"citybrain/up/{code}/telemetry", encode(T0, {"ld": 57.0}), T0, Transport.MQTT, code)
        for code in (NOISE_IN, NOISE_GCJ, NOISE_OUT)
    ]
    await worker.process([encode_batch(loud)])
    assert _open_alerts(database_url) == sorted([(NOISE_IN, "test.school.noise"), (NOISE_GCJ, "test.school.noise")])


async def test_the_worker_tracks_a_mobile_device_into_a_fence_before_its_rules(
    pool: AsyncConnectionPool, database_url: str, models: ModelRegistry
) -> None:
    await _add_fence(GeoService(pool))
    bus = DeviceInfo(BUS, "air-micro@1", "air", "350203", None, "active", {})

    def fixes(lon: float, lat: float, pm25: float, *seconds: int) -> list[tuple[Reading, DeviceInfo]]:
        out = []
        for s in seconds:
            t = T0 + timedelta(seconds=s)
            out += [(Reading(BUS, "lon", t, t, lon, "deg"), bus), (Reading(BUS, "lat", t, t, lat, "deg"), bus)]
            out.append((Reading(BUS, "pm25", t, t, pm25, "ug/m3"), bus))
        return out

    # No rules, no detectors: positions alone still go through the transaction (fence alerts).
    idle = _worker(pool, models, RuleSet(()))
    assert await idle.evaluate(fixes(118.2, 24.6, 100.0, 0, 15)) == []  # outside: nothing
    assert [(k, a.rule) for k, a in await idle.evaluate(fixes(118.10, 24.44, 30.0, 30))] == []  # one fix: not yet
    changed = await idle.evaluate(fixes(118.10, 24.44, 30.0, 45, 60))
    assert [(k, a.rule) for k, a in changed] == [("open", "geofence.school-1")]
    left = await idle.evaluate(fixes(118.2, 24.6, 30.0, 600, 660))
    assert [(k, a.rule) for k, a in left] == [("clear", "geofence.school-1")]

    # With the fence-scoped rule: polluted air outside the fence is not its business ...
    worker = _worker(pool, models, RuleSet(parse_rules(FENCE_RULES)))
    assert await worker.evaluate(fixes(118.2, 24.6, 100.0, 700, 715)) == []
    # ... and the batch that brings the bus in evaluates its rules with the new membership.
    await worker.evaluate(fixes(118.10, 24.44, 100.0, 730))
    changed = await worker.evaluate(fixes(118.10, 24.44, 100.0, 745, 760))
    assert sorted((k, a.rule) for k, a in changed) == [("open", "geofence.school-1"), ("open", "test.school.pm25")]
    assert _open_alerts(database_url) == [(BUS, "geofence.school-1"), (BUS, "test.school.pm25")]


async def test_an_open_fence_alert_does_not_colour_a_device_alerting_on_the_map(
    pool: AsyncConnectionPool, models: ModelRegistry
) -> None:
    app = FastAPI()
    app.include_router(
        geo_routes.build(ApiContext(pool=pool, models=models, registry=CollectorRegistry()), GeoService(pool))
    )
    secure(app, pool)
    headers = await api_key(pool, "integrator")

    async def status() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers) as c:
            fc = (await c.get("/api/v1/geo/devices", params={"bbox": "118.0,24.4,118.2,24.5"})).json()
        return next(f["properties"]["status"] for f in fc["features"] if f["properties"]["code"] == NOISE_IN)

    async def alert(aid: str, rule: str, severity: int) -> None:
        async with pool.connection() as conn:
            await conn.execute(
                "insert into alerts (id, rule, device_code, district, device_class, severity, state, opened_at)"
                " values (%s, %s, %s, '350203', 'noise', %s, 'open', %s)",
                (aid, rule, NOISE_IN, severity, T0),
            )

    await alert("f1", "geofence.school-1", 1)  # inside a fence: an event, not a problem
    assert await status() != "alerting"
    await alert("n1", "noise.day.over_limit", 2)
    assert await status() == "alerting"
