"""Rollup tables are partitioned like the raw tables, and retention drops their old partitions.

On real PostgreSQL: migration 0301 converts rollup tables created before it
(rows kept, each in its UTC month or year, key still enforced); maintenance
creates partitions ahead and on demand for late data, and drops whole rollup
partitions per level once they are older than that level's retention.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.migrations import MIGRATIONS, upgrade
from devices.models import ModelRegistry
from streams import rollup
from streams.normalise import Row
from streams.retention import effective_rollup_retention, maintenance, rollup_partitions_to_drop
from streams.store import ReadingStore, StoreConfig, StoreMetrics

pytestmark = [
    pytest.mark.integration,
    pytest.mark.plain_partitions("tests the partitioned rollup tables, continuous aggregates there"),
]

CODE = "35020603080000017"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _partitions(conn: psycopg.Connection, parent: str) -> list[str]:
    rows = conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = to_regclass(%s) order by 1",
        (parent,),
    ).fetchall()
    return [r[0] for r in rows]


def _relkind(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute("select relkind from pg_class where oid = to_regclass(%s)", (name,)).fetchone()
    return None if row is None else str(row[0])


def test_new_rollup_tables_are_partitioned(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for res in ("5m", "1h", "1d"):
            assert _relkind(conn, f"rollup_air_{res}") == "p"


def test_migration_converts_plain_rollup_tables_keeping_rows(database_url: str, models: ModelRegistry) -> None:
    (migration,) = [run for version, _name, run in MIGRATIONS if version == 301]
    # Rows either side of UTC month and year boundaries; the session's zone is
    # Shanghai's, so a month taken in local time would put them elsewhere.
    rows = {
        "5m": [datetime(2026, 10, 31, 23, 55, tzinfo=UTC), datetime(2026, 11, 1, 0, 0, tzinfo=UTC)],
        "1h": [datetime(2026, 10, 31, 23, 0, tzinfo=UTC), datetime(2026, 12, 1, 0, 0, tzinfo=UTC)],
        "1d": [datetime(2025, 12, 31, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)],
    }
    with psycopg.connect(database_url) as conn:
        conn.execute("set time zone 'Asia/Shanghai'")
        for res, buckets in rows.items():
            # The layout before 0301, as the earlier DDL created it.
            table = f"rollup_air_{res}"
            conn.execute(f"drop table {table}")
            conn.execute(
                f"create table {table} (device_code text not null, bucket timestamptz not null,"
                " pm25_avg double precision, pm25_min double precision, pm25_max double precision,"
                " pm25_count bigint not null default 0, primary key (device_code, bucket))"
            )
            conn.execute(f"create index {table}_bucket on {table} (bucket)")
            for i, b in enumerate(buckets):
                conn.execute(f"insert into {table} values (%s, %s, %s, 1, 2, 3)", (CODE, b, float(i)))
        conn.commit()

        migration(conn)
        conn.commit()

        assert _partitions(conn, "rollup_air_5m") == ["rollup_air_5m_202610", "rollup_air_5m_202611"]
        assert _partitions(conn, "rollup_air_1h") == [
            "rollup_air_1h_202610",
            "rollup_air_1h_202611",
            "rollup_air_1h_202612",
        ]
        assert _partitions(conn, "rollup_air_1d") == ["rollup_air_1d_2025", "rollup_air_1d_2026"]
        for res, buckets in rows.items():
            assert _relkind(conn, f"rollup_air_{res}") == "p"
            got = conn.execute(
                f"select tableoid::regclass::text, bucket, pm25_avg, pm25_count from rollup_air_{res} order by bucket"
            ).fetchall()
            assert [(b, float(i), 3) for i, b in enumerate(buckets)] == [(r[1], r[2], r[3]) for r in got]
            want = [rollup.partition_name("air", rollup.resolution(res), b) for b in buckets]
            assert [r[0] for r in got] == want
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into rollup_air_5m (device_code, bucket) values (%s, %s)", (CODE, rows["5m"][0]))
        conn.rollback()
        assert conn.execute("select count(*) from pg_class where relname like '%%_unpartitioned'").fetchone() == (0,)

        # Idempotent with what upgrade does after it (columns added to the partitioned tables).
        upgrade(conn, models)
        conn.commit()
        assert conn.execute("select count(*) from rollup_air_5m where pm10_count = 0").fetchone() == (2,)


async def _store(url: str, models: ModelRegistry) -> tuple[AsyncConnectionPool, ReadingStore]:
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    return pool, ReadingStore(pool, models, StoreMetrics(CollectorRegistry()), StoreConfig())


async def test_retention_drops_old_rollup_partitions_per_level(database_url: str, models: ModelRegistry) -> None:
    keep = {"5m": 130, "1h": 400, "1d": None}
    pool, store = await _store(database_url, models)
    try:
        times = [datetime(2026, 8, 15, 10, m, tzinfo=UTC) for m in (0, 7)]
        times += [datetime(2026, 10, 10, 10, 0, tzinfo=UTC), datetime(2026, 11, 28, 10, 0, tzinfo=UTC)]
        store.add("air", [Row(CODE, t, t, {"pm25": 10.0 + i}, {}, 0) for i, t in enumerate(times)])
        await store.flush()
        async with pool.connection() as conn:
            first = await maintenance(conn, models, NOW, retention_days=120, rollup_retention_days=keep)
        assert not first.rollup_dropped
        # Ahead: this month and the next; on demand: the months late data fell in.
        assert {"rollup_air_5m_202611", "rollup_air_5m_202612", "rollup_air_1d_2027"} <= set(first.created)
        with psycopg.connect(database_url) as conn:
            assert _partitions(conn, "rollup_air_5m") == [
                "rollup_air_5m_202608",
                "rollup_air_5m_202610",
                "rollup_air_5m_202611",
                "rollup_air_5m_202612",
            ]
            assert conn.execute("select count(*) from rollup_air_5m").fetchone() == (4,)
            assert conn.execute("select count(*) from rollup_air_1h").fetchone() == (3,)

        later = NOW + timedelta(days=60)  # 5 min cutoff 2026-09-20: August is wholly older
        async with pool.connection() as conn:
            second = await maintenance(conn, models, later, retention_days=120, rollup_retention_days=keep)
        assert second.rollup_dropped == ("rollup_air_5m_202608",)
        assert "readings_air_20260815" in second.dropped
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select min(bucket) from rollup_air_5m").fetchone() == (times[2],)
            # Coarser levels outlive the finer one and keep answering for August.
            aug = conn.execute(
                "select pm25_count, pm25_avg from rollup_air_1h where bucket = %s",
                (datetime(2026, 8, 15, 10, tzinfo=UTC),),
            ).fetchone()
            assert aug == (2, 10.5)
            assert conn.execute("select count(*) from rollup_air_1d").fetchone() == (3,)

        # Nothing else to drop; a run with rollups kept for ever drops nothing.
        async with pool.connection() as conn:
            again = await maintenance(conn, models, later, retention_days=120, rollup_retention_days=keep)
            forever = await maintenance(
                conn, models, later + timedelta(days=900), retention_days=120, rollup_retention_days={}
            )
        assert again.rollup_dropped == () and forever.rollup_dropped == ()
    finally:
        await pool.close()


def test_rollup_retention_is_never_shorter_than_raw_or_finer_levels() -> None:
    assert effective_rollup_retention(30, {"5m": 90, "1h": 365, "1d": None}) == {"5m": 90, "1h": 365, "1d": None}
    assert effective_rollup_retention(180, {"5m": 10, "1h": 100, "1d": 1000}) == {"5m": 180, "1h": 180, "1d": 1000}
    # Kept for ever at one level means for ever at every coarser one.
    assert effective_rollup_retention(30, {"5m": None, "1h": 60, "1d": 90}) == {"5m": None, "1h": None, "1d": None}
    assert effective_rollup_retention(30, {}) == {"5m": None, "1h": None, "1d": None}


def test_rollup_partitions_to_drop_only_wholly_older_ones() -> None:
    five = rollup.resolution("5m")
    parts = [
        (rollup.partition_name("air", five, a), a, b)
        for a, b in rollup.partitions_covering(
            five, datetime(2026, 8, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
        )
    ]
    assert [p[0] for p in parts] == ["rollup_air_5m_202608", "rollup_air_5m_202609", "rollup_air_5m_202610"]
    cut = datetime(2026, 10, 1, tzinfo=UTC)
    assert rollup_partitions_to_drop(parts, cut) == ["rollup_air_5m_202608", "rollup_air_5m_202609"]
    assert rollup_partitions_to_drop(parts, cut - timedelta(microseconds=1)) == ["rollup_air_5m_202608"]
    day = rollup.resolution("1d")
    assert rollup.partition_bounds(day, datetime(2026, 12, 31, 23, tzinfo=UTC)) == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert rollup.partition_bounds(five, datetime(2026, 12, 31, 23, tzinfo=UTC))[1] == datetime(2027, 1, 1, tzinfo=UTC)
