"""The SQL of the TimescaleDB path, checked by PostgreSQL without the extension.

``tests/integration/test_timescale.py`` runs the real thing where TimescaleDB
exists (see docs/store.md). Here, on the session's plain PostgreSQL, the
extension's functions, procedure and information views are replaced by stubs
with the documented names and parameter names that record their calls, so
every statement :mod:`streams.timescale` issues is parsed and analysed by the
real server (syntax, named arguments, column names of our own tables and of
the information views) and the policy logic runs end to end:

* ``create_hypertable``, ``add_compression_policy``, ``add_retention_policy``,
  ``remove_retention_policy``, ``add_continuous_aggregate_policy``,
  ``refresh_continuous_aggregate`` and ``time_bucket`` are stubs;
* a continuous aggregate's query is created as a plain materialised view (the
  ``timescaledb.continuous`` option is the one part left out);
* ``alter table … set (timescaledb.compress …)`` must fail only on the unknown
  option namespace, which proves it parsed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from devices.models import ModelRegistry
from streams import rollup, timescale
from streams.retention import maintenance

pytestmark = [
    pytest.mark.integration,
    pytest.mark.plain_partitions("stubs the extension's functions, which the server has for real (test_timescale.py)"),
]

T0 = datetime(2026, 11, 29, tzinfo=UTC)
CODE = "35020603080000017"

_STUBS = """
create table ts_calls (seq bigserial, fn text, args text);
create function ts_s(v interval) returns text language sql immutable
    as $$ select extract(epoch from v)::bigint || 's' $$;
create function create_hypertable(relation regclass, time_column_name name,
    chunk_time_interval interval default null, if_not_exists boolean default false) returns void
    language sql as $$ insert into ts_calls (fn, args) values ('create_hypertable',
    concat_ws(' ', relation, time_column_name, ts_s(chunk_time_interval), if_not_exists::text)) $$;
create function add_compression_policy(hypertable regclass, compress_after interval,
    if_not_exists boolean default false) returns integer
    language sql as $$ insert into ts_calls (fn, args) values ('add_compression_policy',
    concat_ws(' ', hypertable, ts_s(compress_after), if_not_exists::text)) returning 1 $$;
create function add_retention_policy(relation regclass, drop_after interval,
    if_not_exists boolean default false) returns integer
    language sql as $$ insert into ts_calls (fn, args) values ('add_retention_policy',
    concat_ws(' ', relation, ts_s(drop_after), if_not_exists::text)) returning 1 $$;
create function remove_retention_policy(relation regclass, if_exists boolean default false) returns void
    language sql as $$ insert into ts_calls (fn, args) values ('remove_retention_policy',
    concat_ws(' ', relation, if_exists::text)) $$;
create function add_continuous_aggregate_policy(continuous_aggregate regclass, start_offset interval,
    end_offset interval, schedule_interval interval, if_not_exists boolean default false) returns integer
    language sql as $$ insert into ts_calls (fn, args) values ('add_continuous_aggregate_policy',
    concat_ws(' ', continuous_aggregate, ts_s(start_offset), ts_s(end_offset), ts_s(schedule_interval),
    if_not_exists::text))
    returning 1 $$;
create procedure refresh_continuous_aggregate(continuous_aggregate regclass, window_start timestamptz,
    window_end timestamptz)
    language sql as $$ insert into ts_calls (fn, args) values ('refresh_continuous_aggregate',
    concat_ws(' ', continuous_aggregate, window_start at time zone 'UTC', window_end at time zone 'UTC')) $$;
create function time_bucket(bucket_width interval, ts timestamptz) returns timestamptz
    language sql immutable as $$ select date_bin(bucket_width, ts, timestamptz '2000-01-01 00:00+00') $$;
create schema timescaledb_information;
create table timescaledb_information.hypertables (
    hypertable_schema name, hypertable_name name, compression_enabled boolean);
create table timescaledb_information.jobs (
    job_id serial, proc_name name, hypertable_schema name, hypertable_name name, config jsonb);
create table timescaledb_information.continuous_aggregates (
    view_schema name, view_name name, materialization_hypertable_schema name,
    materialization_hypertable_name name);
"""


@pytest.fixture
def stubbed(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        conn.execute(_STUBS)
    return database_url


def _calls(conn: psycopg.Connection) -> list[tuple[str, str]]:
    rows = conn.execute("select fn, args from ts_calls order by seq").fetchall()
    conn.execute("truncate ts_calls")
    return [(r[0], r[1]) for r in rows]


def test_ddl_and_policy_statements_parse_and_bind(stubbed: str) -> None:
    with psycopg.connect(stubbed) as conn:
        conn.execute(timescale.hypertable_sql("readings_air"))
        alter, policy = timescale.compression_sql("readings_air", timedelta(days=7))
        conn.execute(policy)
        for res in rollup.RESOLUTIONS:
            conn.execute(timescale.refresh_policy_sql("air", res.name))
        conn.execute(timescale.retention_policy_sql("rollup_air_5m", timedelta(days=400)))
        conn.execute(timescale.remove_retention_policy_sql("rollup_air_5m"))
        assert _calls(conn) == [
            ("create_hypertable", "readings_air ts 86400s true"),
            ("add_compression_policy", "readings_air 604800s true"),
            ("add_continuous_aggregate_policy", "rollup_air_5m 259200s 300s 300s true"),
            ("add_continuous_aggregate_policy", "rollup_air_1h 604800s 3600s 1800s true"),
            ("add_continuous_aggregate_policy", "rollup_air_1d 2592000s 86400s 21600s true"),
            ("add_retention_policy", "rollup_air_5m 34560000s true"),
            ("remove_retention_policy", "rollup_air_5m true"),
        ]
        conn.commit()
        # Parsed: only the option namespace, which the extension registers, is unknown.
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="timescaledb"):
            conn.execute(alter)
        conn.rollback()


def test_continuous_aggregate_queries_analyse_and_agree_with_plain_rollups(stubbed: str, models: ModelRegistry) -> None:
    metrics = models.metrics_of_class("air")
    with psycopg.connect(stubbed) as conn:
        conn.execute(
            "create table if not exists readings_air_20261129 partition of readings_air"
            " for values from ('2026-11-29 00:00+00') to ('2026-11-30 00:00+00')"
        )
        conn.execute(
            "insert into readings_air (device_code, ts, rx, pm25, flags) values (%s, %s, %s, 10, null),"
            ' (%s, %s, %s, 30, null), (%s, %s, %s, 99, \'{"pm25": "bad"}\')',
            (CODE, T0, T0, CODE, T0 + timedelta(minutes=2), T0, CODE, T0 + timedelta(minutes=3), T0),
        )
        for res in rollup.RESOLUTIONS:
            conn.execute(f"drop table rollup_air_{res.name}")
            text = timescale.continuous_aggregate_sql("air", metrics, res.name).as_string(conn)
            assert " with (timescaledb.continuous) as " in text and text.endswith(" with no data")
            conn.execute(text.replace(" with (timescaledb.continuous)", ""))
            cols = conn.execute(
                "select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 order by attnum",
                (f"rollup_air_{res.name}",),
            ).fetchall()
            assert [c[0] for c in cols] == [
                "device_code",
                "bucket",
                *[c for m in metrics for c in rollup.rollup_columns(m)],
            ]
            conn.execute(f"refresh materialized view rollup_air_{res.name}")
            got = conn.execute(f"select bucket, pm25_avg, pm25_min, pm25_max, pm25_count from rollup_air_{res.name}")
            # Bad values left out, buckets aligned on UTC midnight, as the plain rollups.
            assert got.fetchall() == [(T0, 20.0, 10.0, 30.0, 2)]


async def test_policy_upkeep_and_marked_refreshes(stubbed: str) -> None:
    async with await psycopg.AsyncConnection.connect(stubbed) as conn:
        calls = await _acalls_factory(conn)
        await conn.execute(
            "insert into timescaledb_information.hypertables values ('public', 'readings_air', true);"
            "insert into timescaledb_information.continuous_aggregates"
            " values ('public', 'rollup_air_5m', '_timescaledb_internal', '_materialized_hypertable_3')"
        )
        await timescale.ensure_policies(conn, "readings_air", retention=timedelta(days=30), compress_after=None)
        assert await calls() == [("add_retention_policy", "readings_air 2592000s true")]
        await conn.execute(
            "insert into timescaledb_information.jobs (proc_name, hypertable_schema, hypertable_name, config) values"
            " ('policy_retention', 'public', 'readings_air', '{\"drop_after\": \"30 days\"}')"
        )
        await timescale.ensure_policies(conn, "readings_air", retention=timedelta(days=30), compress_after=None)
        assert await calls() == []  # already in line
        await timescale.ensure_policies(conn, "readings_air", retention=timedelta(days=60), compress_after=None)
        assert await calls() == [
            ("remove_retention_policy", "readings_air true"),
            ("add_retention_policy", "readings_air 5184000s true"),
        ]

        # Continuous aggregates: found through their materialization hypertable.
        await timescale.ensure_rollup_retention(conn, "rollup_air_5m", timedelta(days=400))
        assert await calls() == [("add_retention_policy", "rollup_air_5m 34560000s true")]
        await conn.execute(
            "insert into timescaledb_information.jobs (proc_name, hypertable_schema, hypertable_name, config) values"
            " ('policy_retention', '_timescaledb_internal', '_materialized_hypertable_3',"
            ' \'{"drop_after": "400 days"}\')'
        )
        await timescale.ensure_rollup_retention(conn, "rollup_air_5m", timedelta(days=400))
        assert await calls() == []
        await timescale.ensure_rollup_retention(conn, "rollup_air_5m", None)
        assert await calls() == [("remove_retention_policy", "rollup_air_5m true")]
        await timescale.ensure_rollup_retention(conn, "rollup_air_1h", timedelta(days=400))  # a plain table
        assert await calls() == []

        # Dirty marks become refreshes per level over merged ranges (autocommit: procedures).
        await conn.execute(
            "insert into rollup_dirty (device_class, resolution, bucket) values"
            " ('air', '5m', %s), ('air', '5m', %s), ('air', '5m', %s), ('air', '1h', %s)",
            (T0, T0 + timedelta(minutes=5), T0 + timedelta(hours=2), T0),
        )
        await conn.commit()
        await conn.set_autocommit(True)
        done = await timescale.refresh_marked(conn, "air", keep_from=T0)
        assert [(r.resolution, r.ranges, r.buckets) for r in done] == [("5m", 2, 3), ("1h", 2, 2), ("1d", 1, 1)]
        assert await calls() == [
            ("refresh_continuous_aggregate", "rollup_air_5m 2026-11-29 00:00:00 2026-11-29 00:10:00"),
            ("refresh_continuous_aggregate", "rollup_air_5m 2026-11-29 02:00:00 2026-11-29 02:05:00"),
            ("refresh_continuous_aggregate", "rollup_air_1h 2026-11-29 00:00:00 2026-11-29 01:00:00"),
            ("refresh_continuous_aggregate", "rollup_air_1h 2026-11-29 02:00:00 2026-11-29 03:00:00"),
            ("refresh_continuous_aggregate", "rollup_air_1d 2026-11-29 00:00:00 2026-11-30 00:00:00"),
        ]
        left = await (await conn.execute("select count(*) from rollup_dirty")).fetchone()
        assert left == (0,)


async def _acalls_factory(conn: psycopg.AsyncConnection) -> Callable[[], Awaitable[list[tuple[str, str]]]]:
    async def calls() -> list[tuple[str, str]]:
        rows = await (await conn.execute("select fn, args from ts_calls order by seq")).fetchall()
        await conn.execute("truncate ts_calls")
        return [(r[0], r[1]) for r in rows]

    return calls


async def test_maintenance_reports_the_buckets_it_refreshed_on_timescale(stubbed: str, models: ModelRegistry) -> None:
    # Regression: the TimescaleDB path refreshed the continuous aggregates but its report
    # said "rollup buckets refreshed 0".
    with psycopg.connect(stubbed) as conn:
        # readings_air as a hypertable looks to maintenance: a table that is not natively partitioned.
        conn.execute("drop table readings_air cascade")
        conn.execute(
            "create table readings_air (device_code text not null, ts timestamptz not null, rx timestamptz not null,"
            " quality smallint not null default 0, flags jsonb, pm25 double precision, primary key (device_code, ts))"
        )
        conn.execute("insert into timescaledb_information.hypertables values ('public', 'readings_air', true)")
        conn.execute(
            "insert into rollup_dirty (device_class, resolution, bucket) values ('air', '5m', %s), ('air', '5m', %s)",
            (T0, T0 + timedelta(hours=2)),
        )
    async with await psycopg.AsyncConnection.connect(stubbed) as conn:
        report = await maintenance(conn, models, T0 + timedelta(days=1), retention_days=30, compress_after_days=None)
    assert "air" in report.timescale
    air = [(r.resolution, r.ranges, r.buckets) for r in report.refreshed if r.device_class == "air"]
    assert air == [("5m", 2, 2), ("1h", 2, 2), ("1d", 1, 1)]
    assert "rollup buckets refreshed 5" in report.summary()
