"""The store on TimescaleDB: hypertables, continuous aggregates, policies, same query API.

Runs against a database that has the ``timescaledb`` extension: the session's
own server when it offers it, or the server named by ``CITYBRAIN_TIMESCALE_URL``
(a database this test may create databases on), e.g.::

    docker run -d --name tsdb -p 5433:5432 -e POSTGRES_HOST_AUTH_METHOD=trust timescale/timescaledb:latest-pg16
    CITYBRAIN_TIMESCALE_URL=postgresql://postgres@127.0.0.1:5433/postgres \\
        .venv/bin/pytest tests/integration/test_timescale.py

Without either, the test is skipped with that instruction (embedded
PostgreSQL and the distribution's PostgreSQL do not ship the extension).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.harness import Services
from citybrain.migrations import upgrade
from devices.models import ModelRegistry
from streams import queries, timescale
from streams.normalise import Row
from streams.retention import maintenance
from streams.store import ReadingStore, StoreMetrics

pytestmark = pytest.mark.integration

HOW = (
    "TimescaleDB is not available: set CITYBRAIN_TIMESCALE_URL to a PostgreSQL server with the timescaledb "
    "extension (e.g. the timescale/timescaledb Docker image) to run this test; see docs/store.md"
)


def _with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


@pytest.fixture
def tsdb_url(services: Services) -> Iterator[str]:
    server = os.environ.get("CITYBRAIN_TIMESCALE_URL") or services.database_url
    assert server
    with psycopg.connect(server, autocommit=True) as conn:
        cap = timescale.probe(conn)
        if not cap.available:
            pytest.skip(HOW)
        if not cap.preloaded:
            pytest.skip(HOW + " (the extension is installed but not in shared_preload_libraries)")
        name = f"cb_ts_{uuid.uuid4().hex[:8]}"
        conn.execute(f'create database "{name}"')
    try:
        yield _with_db(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


async def test_hypertables_and_continuous_aggregates(tsdb_url: str, models: ModelRegistry) -> None:
    with psycopg.connect(tsdb_url) as conn:
        upgrade(conn, models)
        conn.commit()
        if not timescale.probe(conn).installed:
            pytest.skip(HOW + " (the extension is available but could not be created: is it preloaded?)")
        hyper = conn.execute("select hypertable_name from timescaledb_information.hypertables order by 1").fetchall()
        caggs = conn.execute(
            "select view_name from timescaledb_information.continuous_aggregates order by 1"
        ).fetchall()
    assert ("readings_air",) in hyper
    assert {("rollup_air_5m",), ("rollup_air_1h",), ("rollup_air_1d",)} <= set(caggs)

    pool = AsyncConnectionPool(tsdb_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        store = ReadingStore(pool, models, StoreMetrics(CollectorRegistry()))
        t0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
        rows = [
            Row("35020603080000017", t0 + timedelta(minutes=i), t0, {"pm25": float(i % 50)}, {}, 0) for i in range(600)
        ]
        store.add("air", rows)
        await store.flush()
        store.add("air", rows)  # replay: no duplicates on a hypertable either
        await store.flush()
        async with pool.connection() as conn:
            await maintenance(conn, models, datetime.now(UTC), retention_days=30)
            assert await (await conn.execute("select count(*) from readings_air")).fetchone() == (600,)
            catalog = await queries.Catalog.load(conn, models)
            src = catalog.source("air", "pm25")
            assert src.timescale and src.rollups == frozenset({"5m", "1h", "1d"})
            lo, hi = t0, t0 + timedelta(hours=10)
            raw = await queries.fetch_buckets(
                conn,
                src,
                queries.plan_buckets(src, lo, hi, timedelta(hours=1), source="raw"),
                "35020603080000017",
                lo,
                hi,
            )
            agg = await queries.fetch_buckets(
                conn, src, queries.plan_buckets(src, lo, hi, timedelta(hours=1)), "35020603080000017", lo, hi
            )
            jobs = await (
                await conn.execute(
                    "select proc_name from timescaledb_information.jobs where hypertable_name = 'readings_air'"
                )
            ).fetchall()
        assert [(b.start, b.count, b.min, b.max) for b in raw] == [(b.start, b.count, b.min, b.max) for b in agg]
        assert {("policy_retention",), ("policy_compression",)} <= set(jobs)
    finally:
        await pool.close()
