"""Store and pipeline on real PostgreSQL: idempotent writes, late data, alerts once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.rules import shipped_rules
from citybrain.records import RawMessage, Transport
from citybrain.topics import KafkaTopics
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics

pytestmark = pytest.mark.integration

CODE = "35020603080000017"


class FakePublisher:
    """Collects what the pipeline would send to Kafka (the broker path is covered in e2e)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        self.sent.append((topic, key, value, list(headers or [])))

    def on(self, topic: str) -> list[bytes]:
        return [v for t, _, v, _ in self.sent if t == topic]


def _raw(t: datetime, metrics: dict, ts_format: str = "iso") -> RawMessage:
    return RawMessage(
        f"citybrain/up/{CODE}/telemetry",
        encode(t, metrics, ts_format=ts_format),
        datetime.now(UTC),
        Transport.MQTT,
        CODE,
    )


async def _pipeline(database_url: str, models: ModelRegistry, pub: FakePublisher):
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    reg = CollectorRegistry()
    pipe = Pipeline(
        PipelineConfig(topics=KafkaTopics("t"), rules=shipped_rules()),
        pool,
        models,
        pub,
        PipelineMetrics(reg),
        ReadingStore(pool, models, StoreMetrics(reg)),
    )
    await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
    return pool, pipe


async def test_replayed_batch_stores_no_duplicates_and_alerts_once(database_url: str, models: ModelRegistry) -> None:
    pub = FakePublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        t0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
        record = encode_batch(
            [
                _raw(t0 + timedelta(minutes=i), {"pm25": v, "pm10": 2 * v})
                for i, v in enumerate([30, 90, 95, 40, 40, 40])
            ]
        )
        await pipe.process([record])
        await pipe.process([record])  # replay after a crash before the offset commit
        # The same instant again, as an integer epoch: one row, not two.
        await pipe.process([encode_batch([_raw(t0, {"pm25": 30}, ts_format="s")])])
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select count(*) from readings_air").fetchone() == (6,)
            assert conn.execute("select state from devices").fetchone() == ("active",)
            alerts = conn.execute("select state, value from alerts").fetchall()
        assert alerts == [("resolved", 90.0)]
        assert len(pub.on("t.alerts")) == 2  # one open, one clear (held 60 s) — the replay published nothing
        assert len(pub.on("t.readings.air")) == 13
    finally:
        await pool.close()


async def test_late_data_lands_in_its_own_day_partition(database_url: str, models: ModelRegistry) -> None:
    pub = FakePublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        late = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
        await pipe.process([encode_batch([_raw(late, {"pm25": 12})])])
        with psycopg.connect(database_url) as conn:
            row = conn.execute("select tableoid::regclass::text from readings_air").fetchone()
        assert row == ("readings_air_20250301",)
    finally:
        await pool.close()


async def test_bad_payloads_are_dead_lettered_with_reason(database_url: str, models: ModelRegistry) -> None:
    pub = FakePublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        bad = RawMessage(f"citybrain/up/{CODE}/telemetry", b"{not json", datetime.now(UTC), Transport.MQTT, CODE)
        await pipe.process([encode_batch([bad]), b"garbage record"])
        reasons = sorted(dict(h)["reason"].decode() for t, _, _, h in pub.sent if t == "t.deadletter")
        assert reasons == ["bad_batch", "bad_json"]
        originals = [v for t, _, v, _ in pub.sent if t == "t.deadletter"]
        assert b"{not json" in originals and b"garbage record" in originals
    finally:
        await pool.close()
