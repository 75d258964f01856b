"""Store, rollups and retention on real PostgreSQL.

Rollups are checked against aggregates computed in Python from the rows the
test wrote (seeded), before and after late data.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from devices.models import ModelRegistry
from streams.normalise import Row
from streams.retention import maintenance
from streams.rollup import BUCKET_ORIGIN
from streams.store import ReadingStore, StoreConfig, StoreMetrics

pytestmark = pytest.mark.integration

DEVICES = ["35020603080000017", "35020603080000025", "35020303080000012"]
T0 = datetime(2026, 11, 27, tzinfo=UTC)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _rows(rng: np.random.Generator, start: datetime, minutes: int, step_s: int = 60) -> list[Row]:
    out = []
    for i in range(minutes * 60 // step_s):
        for code in DEVICES:
            t = start + timedelta(seconds=i * step_s)
            r = rng.random()
            flag = "bad" if r < 0.05 else ("suspect" if r < 0.15 else None)
            values = {"pm25": float(np.round(rng.gamma(4, 10), 3)), "pm10": float(np.round(rng.gamma(6, 10), 3))}
            flags = {"pm25": flag} if flag else {}
            out.append(
                Row(code, t, t + timedelta(seconds=1), values, flags, {"bad": 2, "suspect": 1}.get(flag or "", 0))
            )
    return out


def _expected(rows: dict[tuple[str, datetime], Row], width: timedelta) -> dict[tuple[str, datetime], tuple]:
    acc: dict[tuple[str, datetime], list[float]] = defaultdict(list)
    for (code, t), row in rows.items():
        bucket = BUCKET_ORIGIN + ((t - BUCKET_ORIGIN) // width) * width
        if row.flags.get("pm25", "").startswith("bad"):
            acc.setdefault((code, bucket), [])
            continue
        acc[(code, bucket)].append(row.values["pm25"])
    return {
        k: ((sum(v) / len(v)) if v else None, min(v, default=None), max(v, default=None), len(v))
        for k, v in acc.items()
    }


def _actual(conn: psycopg.Connection, res: str) -> dict[tuple[str, datetime], tuple]:
    rows = conn.execute(
        f"select device_code, bucket, pm25_avg, pm25_min, pm25_max, pm25_count from rollup_air_{res}"
    ).fetchall()
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in rows}


def _assert_same(expected: dict, actual: dict) -> None:
    assert set(expected) == set(actual)
    for k, (avg, mn, mx, n) in expected.items():
        a = actual[k]
        assert a[3] == n, k
        assert (a[0] is None) == (avg is None) and (avg is None or a[0] == pytest.approx(avg, rel=1e-9)), k
        assert (a[1], a[2]) == (mn, mx), k


async def _store(url: str, models: ModelRegistry, batch_rows: int = 10_000) -> tuple[AsyncConnectionPool, ReadingStore]:
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    return pool, ReadingStore(pool, models, StoreMetrics(CollectorRegistry()), StoreConfig(batch_rows=batch_rows))


@pytest.mark.plain_partitions("checks the plain rollup refresh and its watermarks (continuous aggregates there)")
async def test_rollups_agree_with_raw_rows_including_late_data(database_url: str, models: ModelRegistry) -> None:
    rng = np.random.default_rng(5)
    pool, store = await _store(database_url, models, batch_rows=1000)  # several transactions per flush
    try:
        written: dict[tuple[str, datetime], Row] = {}
        batch = _rows(rng, T0, 36 * 60)  # 36 h: crosses a day boundary
        for r in batch:
            written[(r.device_code, r.event_time)] = r
        store.add("air", batch)
        await store.flush()
        async with pool.connection() as conn:
            await maintenance(conn, models, NOW, retention_days=30)
        with psycopg.connect(database_url) as conn:
            for res, width in (("5m", timedelta(minutes=5)), ("1h", timedelta(hours=1)), ("1d", timedelta(days=1))):
                _assert_same(_expected(written, width), _actual(conn, res))

        # Late data: a device's backlog for an old hour, plus corrected values
        # (a replay with new numbers) inside an already rolled-up bucket.
        late = _rows(rng, T0 + timedelta(hours=3, minutes=0, seconds=30), 20)
        fixes = [
            Row(r.device_code, r.event_time, r.received_at, {"pm25": r.values["pm25"] + 1000.0}, {}, 0)
            for r in batch[:30]
        ]
        for r in late:
            written[(r.device_code, r.event_time)] = r
        for r in fixes:
            old = written[(r.device_code, r.event_time)]
            # The merge keeps the worst quality and merges flags, as the store documents.
            written[(r.device_code, r.event_time)] = Row(
                r.device_code, r.event_time, old.received_at, old.values | r.values, dict(old.flags), old.quality
            )
        store.add("air", late + fixes)
        await store.flush()
        async with pool.connection() as conn:
            report = await maintenance(conn, models, NOW, retention_days=30)
            again = await maintenance(conn, models, NOW, retention_days=30)  # nothing dirty: a no-op
        assert sum(r.buckets for r in report.refreshed) > 0
        assert sum(r.buckets for r in again.refreshed) == 0
        with psycopg.connect(database_url) as conn:
            for res, width in (("5m", timedelta(minutes=5)), ("1h", timedelta(hours=1)), ("1d", timedelta(days=1))):
                _assert_same(_expected(written, width), _actual(conn, res))
            marks = conn.execute("select count(*) from rollup_dirty").fetchone()
            wm = conn.execute(
                "select resolution, buckets > 0 from rollup_watermark where device_class = 'air'"
            ).fetchall()
        assert marks == (0,)
        assert sorted(wm) == [("1d", True), ("1h", True), ("5m", True)]
    finally:
        await pool.close()


async def test_metrics_without_a_wide_column_go_to_the_narrow_table(database_url: str, models: ModelRegistry) -> None:
    # A model version newer than the database: its metric has no column yet.
    with psycopg.connect(database_url) as conn:
        conn.execute("alter table readings_air drop column wind_direction")
    pool, store = await _store(database_url, models)
    try:
        t = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
        rows = [
            Row(DEVICES[0], t + timedelta(minutes=i), t, {"pm25": 10.0 + i, "wind_direction": 90.0 + i}, {}, 0)
            for i in range(5)
        ]
        rows.append(
            Row(DEVICES[0], t + timedelta(minutes=9), t, {"wind_direction": 400.0}, {"wind_direction": "suspect"}, 1)
        )
        for _ in range(2):  # the replay stores nothing twice
            store.add("air", rows)
            await store.flush()
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select count(*), count(pm25) from readings_air").fetchone() == (6, 5)
            extra = conn.execute("select metric, value, unit, quality from readings_extra order by ts").fetchall()
        assert len(extra) == 6
        assert extra[0] == ("wind_direction", 90.0, "deg", 0)
        assert extra[-1] == ("wind_direction", 400.0, "deg", 1)
        assert store.metrics.values.labels("readings_extra")._value.get() == 12
    finally:
        await pool.close()


@pytest.mark.plain_partitions("checks day partitions dropped by retention (a retention policy there)")
async def test_retention_drops_old_partitions_and_keeps_recent_ones(database_url: str, models: ModelRegistry) -> None:
    pool, store = await _store(database_url, models)
    try:
        days = [40, 31, 30, 1, 0]
        for d in days:
            t = NOW - timedelta(days=d)
            store.add("air", [Row(DEVICES[0], t, t, {"pm25": float(d)}, {}, 0)])
        await store.flush()
        async with pool.connection() as conn:
            await conn.execute(
                "insert into readings_extra (device_code, metric, ts, rx, value, unit)"
                " values (%s, 'x', %s, %s, 1, ''), (%s, 'x', %s, %s, 1, '')",
                (DEVICES[0], NOW - timedelta(days=40), NOW, DEVICES[0], NOW, NOW),
            )
            await conn.commit()
            report = await maintenance(conn, models, NOW, retention_days=30)
        assert sorted(report.dropped) == ["readings_air_20261020", "readings_air_20261029"]
        assert report.extra_deleted == 1
        assert "readings_air_20261206" in report.created  # 7 days ahead
        with psycopg.connect(database_url) as conn:
            left = conn.execute("select pm25 from readings_air order by ts").fetchall()
            parts = {r[0] for r in conn.execute("select relname from pg_class where relname like 'readings_air_2026%'")}
            rolled = conn.execute("select count(*) from rollup_air_1d").fetchone()
        assert left == [(30.0,), (1.0,), (0.0,)]
        assert "readings_air_20261030" in parts and "readings_air_20261029" not in parts
        assert rolled == (3,)  # rollups of dropped days were never built here (marked before the cutoff)

        # Late data for a dropped day: the store recreates the partition, the
        # next run drops it again and the rollups are not wiped.
        late = NOW - timedelta(days=35)
        store.add("air", [Row(DEVICES[0], late, NOW, {"pm25": 1.0}, {}, 0)])
        await store.flush()
        async with pool.connection() as conn:
            report = await maintenance(conn, models, NOW, retention_days=30)
        assert report.dropped == ("readings_air_20261025",)
    finally:
        await pool.close()


async def test_one_maintainer_at_a_time(database_url: str, models: ModelRegistry) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(727275)")
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            report = await maintenance(conn, models, NOW, retention_days=30)
    assert report.skipped and not report.created
