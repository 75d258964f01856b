"""Readings at the edges of time get a clear answer (issue 14 §3), on real PostgreSQL.

* older than the retention window: dead-lettered ``beyond_retention``, never
  stored then dropped by maintenance;
* a row whose partition does not exist (detached): dead-lettered
  ``no_partition`` while the rest of its batch lands, with no retry loop;
* beyond the clock-skew limit: stored (flagged suspect) but never a device's
  "latest" in the API.

Everything reads one injected instant ``NOW``; nothing depends on today's date.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.routes import readings
from citybrain.routes.context import ApiContext
from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.retention import list_partitions, maintenance
from streams.store import ReadingStore, StoreMetrics, partition_name
from tests.integration.helpers import api_key, secure

pytestmark = pytest.mark.integration

CODE = "35020603080000017"
# Any instant will do: the pipeline and the API read this clock, not the wall clock.
NOW = datetime(2031, 6, 15, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)


class Publisher:
    """Collects what the pipeline would send to Kafka."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        self.sent.append((topic, value, dict(headers or [])))

    def dead(self) -> list[dict[str, bytes]]:
        return [h for t, _, h in self.sent if t == "t.deadletter"]

    def readings(self) -> list[bytes]:
        return [v for t, v, _ in self.sent if t == "t.readings.air"]


def _raw(t: datetime, pm25: float) -> RawMessage:
    return RawMessage(f"citybrain/up/{CODE}/telemetry", encode(t, {"pm25": pm25}), NOW, Transport.MQTT, CODE)


@pytest.fixture
async def pool(database_url: str, models: ModelRegistry) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
        yield pool
    finally:
        await pool.close()


def _pipeline(pool: AsyncConnectionPool, models: ModelRegistry, pub: Publisher, **kw: Any) -> Pipeline:
    reg = CollectorRegistry()
    return Pipeline(
        PipelineConfig(topics=KafkaTopics("t"), max_future_skew=SKEW, **kw),
        pool,
        models,
        pub,
        PipelineMetrics(reg),
        ReadingStore(pool, models, StoreMetrics(reg)),
        clock=lambda: NOW,
    )


def _stored(database_url: str) -> list[float]:
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("select pm25 from readings_air order by pm25").fetchall()]


@pytest.mark.plain_partitions("checks which day partitions exist and what maintenance drops")
async def test_older_than_retention_is_dead_lettered_and_counted_never_stored(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    pub = Publisher()
    pipe = _pipeline(pool, models, pub, retention_days=180)
    start = pipe.retention_start(NOW)
    assert start == datetime(2030, 12, 17, tzinfo=UTC)  # the first UTC day maintenance keeps
    batch = [
        _raw(NOW - timedelta(days=179), 179.0),
        _raw(NOW - timedelta(days=181), 181.0),
        _raw(NOW - timedelta(days=200), 200.0),
        _raw(start, 180.0),  # the first instant kept
        _raw(start - timedelta(seconds=1), 180.5),  # the last one dropped
        _raw(NOW - timedelta(hours=1), 1.0),
    ]
    await asyncio.wait_for(pipe.process([encode_batch(batch)]), 30)

    assert _stored(database_url) == [1.0, 179.0, 180.0]
    dead = pub.dead()
    assert [h["reason"] for h in dead] == [b"beyond_retention"] * 3
    assert b"before the retention window" in dead[0]["detail"]
    assert pipe.metrics.rejected.labels("beyond_retention")._value.get() == 3
    assert pipe.metrics.store_retries._value.get() == 0
    assert len(pub.readings()) == 3  # nothing downstream sees the rejected readings
    async with pool.connection() as conn:
        days = {d for _, d in await list_partitions(conn, "air")}
    assert (NOW - timedelta(days=181)).date() not in days and (NOW - timedelta(days=200)).date() not in days

    # What was stored stays stored: the maintenance run at the same instant drops nothing of it.
    async with pool.connection() as conn:
        report = await maintenance(conn, models, NOW, retention_days=180)
    assert report.dropped == ()
    assert _stored(database_url) == [1.0, 179.0, 180.0]


@pytest.mark.plain_partitions("detaches a day partition (a hypertable has none)")
async def test_a_row_without_a_partition_is_dead_lettered_and_the_batch_lands(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    pub = Publisher()
    pipe = _pipeline(pool, models, pub, retention_days=180)
    day = NOW - timedelta(days=10)
    await pipe.process([encode_batch([_raw(day, 5.0)])])  # creates (and caches) the day's partition
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'alter table readings_air detach partition "{partition_name("air", day.date())}"')

    batch = [_raw(NOW - timedelta(hours=2), 8.0), _raw(day + timedelta(minutes=1), 6.0), _raw(NOW, 7.0)]
    # Once with the partition still cached by this worker, once by a worker that never saw it.
    for worker in (pipe, _pipeline(pool, models, pub, retention_days=180)):
        pub.sent.clear()
        await asyncio.wait_for(worker.process([encode_batch(batch)]), 30)
        assert _stored(database_url) == [7.0, 8.0]
        dead = pub.dead()
        assert [h["reason"] for h in dead] == [b"no_partition"]
        assert b"no partition of relation" in dead[0]["detail"]
        assert worker.metrics.rejected.labels("no_partition")._value.get() == 1
        assert worker.metrics.store_retries._value.get() == 0
        assert len(pub.readings()) == 2
    # Idempotent as ever: the replay above stored nothing twice.
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from readings_air").fetchone() == (2,)


async def test_a_reading_beyond_the_skew_limit_is_never_the_latest(
    models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    pub = Publisher()
    pipe = _pipeline(pool, models, pub)
    ctx = ApiContext(pool=pool, models=models, registry=CollectorRegistry(), clock=lambda: NOW, max_future_skew=SKEW)
    app = FastAPI()
    app.include_router(readings.build(ctx))
    secure(app, pool)
    headers = await api_key(pool, "app")

    async def latest(c: httpx.AsyncClient) -> tuple[float, str, float, str]:
        one = (await c.get(f"/api/v1/devices/{CODE}/latest")).json()["metrics"]["pm25"]
        many = (await c.get("/api/v1/readings/latest", params={"class": "air", "within_minutes": "60"})).json()
        (item,) = many["items"]
        return one["value"], one["ts"], item["metrics"]["pm25"], item["ts"]

    def iso(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers) as c:
        good = NOW - timedelta(minutes=1)
        await pipe.process(
            [
                encode_batch(
                    [
                        _raw(good, 10.0),
                        _raw(NOW + SKEW + timedelta(seconds=1), 30.0),  # just beyond the limit
                        _raw(NOW + timedelta(days=365), 40.0),  # a clock a year ahead
                    ]
                )
            ]
        )
        assert pipe.metrics.skew._value.get() == 2  # flagged and stored …
        with psycopg.connect(pool.conninfo) as conn:
            assert conn.execute("select count(*) from readings_air").fetchone() == (3,)
        assert await latest(c) == (10.0, iso(good), 10.0, iso(good))  # … but never the latest

        inside = NOW + SKEW - timedelta(seconds=1)  # just inside the limit: a reading like any other
        await pipe.process([encode_batch([_raw(inside, 20.0)])])
        assert pipe.metrics.skew._value.get() == 2
        assert await latest(c) == (20.0, iso(inside), 20.0, iso(inside))
