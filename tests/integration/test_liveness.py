"""Liveness and the alerting pipeline on real PostgreSQL.

Silence opens one offline alert and data flowing again clears it; MQTT status
messages (birth, last will) keep connected-but-stale apart from offline; the
anomaly detectors raise alerts through the rules' transaction, survive a
restart without repeats, and give the same alerts in a split deployment
(ingest workers + an alerts worker over the readings topic).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly.config import parse_anomaly_config
from alerts.rules import shipped_rules
from alerts.store import AlertStore
from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from streams.liveness import OFFLINE_RULE, STALE_RULE, LivenessConfig, check_liveness
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics

pytestmark = pytest.mark.integration

CODE = "35020603080000017"  # air station: cadence 60 s


async def _active_and_last_seen(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool, at: datetime
) -> None:
    """Register CODE as an active air station last seen (and last sending) at ``at``."""
    await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update devices set state = 'active' where code = %s", (CODE,))
        conn.execute(
            "insert into device_liveness (code, last_seen, last_event_time) values (%s, %s, %s)", (CODE, at, at)
        )


async def test_silent_device_goes_offline_once_and_recovers(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    now = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    # silent for 10 minutes: 10 cadences > k = 5
    await _active_and_last_seen(database_url, models, pool, now - timedelta(minutes=10))
    store = AlertStore(pool)
    cfg = LivenessConfig(k=5)
    opened = await check_liveness(pool, models, store, now, cfg)
    assert [(k, a.rule, a.device_code) for k, a in opened] == [("open", OFFLINE_RULE, CODE)]
    # opened at the moment it went silent: last seen + 5 × 60 s
    assert opened[0][1].opened_at == now - timedelta(minutes=5)
    # a second run (or a second worker) changes nothing
    assert await check_liveness(pool, models, store, now + timedelta(seconds=15), cfg) == []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update device_liveness set last_seen = %s where code = %s", (now, CODE))
    cleared = await check_liveness(pool, models, store, now + timedelta(seconds=20), cfg)
    assert [(k, a.id) for k, a in cleared] == [("clear", opened[0][1].id)]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select state from alerts").fetchall() == [("resolved",)]
        assert conn.execute("select count(*) from alert_outbox").fetchone() == (2,)


async def test_a_device_that_reports_on_time_is_never_offline(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    now = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    await _active_and_last_seen(database_url, models, pool, now - timedelta(minutes=2))
    assert await check_liveness(pool, models, AlertStore(pool), now, LivenessConfig(k=5)) == []


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        self.sent.append((topic, key, value))

    def on(self, topic: str) -> list[bytes]:
        return [v for t, _, v in self.sent if t == topic]


ANOMALY = parse_anomaly_config("series: [{class: air, metrics: [pm25], detectors: {ewma: {}, robust_z: {window: 40}}}]")


def _pipeline(pool: AsyncConnectionPool, models: ModelRegistry, pub: _Publisher, *, evaluate: bool = True) -> Pipeline:
    reg = CollectorRegistry()
    return Pipeline(
        PipelineConfig(topics=KafkaTopics("t"), rules=shipped_rules(), anomaly=ANOMALY, evaluate=evaluate),
        pool,
        models,
        pub,
        PipelineMetrics(reg),
        ReadingStore(pool, models, StoreMetrics(reg)),
    )


def _status(state: str, at: datetime) -> RawMessage:
    payload = json.dumps({"v": 1, "state": state}).encode()
    return RawMessage(f"citybrain/up/{CODE}/status", payload, at, Transport.MQTT, CODE)


def _telemetry(t: datetime, pm25: float, rx: datetime | None = None) -> RawMessage:
    return RawMessage(f"citybrain/up/{CODE}/telemetry", encode(t, {"pm25": pm25}), rx or t, Transport.MQTT, CODE)


def _series(n: int = 60, spike_at: int = 45) -> list[float]:
    values = [float(v) for v in 30 + np.random.default_rng(3).normal(0, 1.5, n)]
    values[spike_at] = 60.0  # under every rule's limit: only the detectors see it
    return values


async def test_last_will_is_offline_at_once_and_a_connected_silent_device_stale(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    pipe = _pipeline(pool, models, _Publisher())
    await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
    t0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    await pipe.process([encode_batch([_status("online", t0), _telemetry(t0, 20.0)])])
    # a gateway restart re-delivers the retained birth: same state, so status_at does not move
    await pipe.process([encode_batch([_status("online", t0 + timedelta(minutes=30))])])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select connected, status_at from device_sessions").fetchall() == [(True, t0)]
    store, cfg = AlertStore(pool), LivenessConfig(k=5)
    stale = await check_liveness(pool, models, store, t0 + timedelta(minutes=10), cfg)
    assert [(k, a.rule, a.opened_at) for k, a in stale] == [("open", STALE_RULE, t0 + timedelta(minutes=5))]
    # the connection drops: the broker's last will arrives
    lost = t0 + timedelta(minutes=11)
    await pipe.process([encode_batch([_status("offline", lost)])])
    moved = await check_liveness(pool, models, store, lost + timedelta(seconds=15), cfg)
    assert sorted((k, a.rule) for k, a in moved) == [("clear", STALE_RULE), ("open", OFFLINE_RULE)]
    assert next(a.opened_at for k, a in moved if k == "open") == lost
    # back: birth and data; the offline alert clears
    back = lost + timedelta(minutes=2)
    await pipe.process([encode_batch([_status("online", back), _telemetry(back, 21.0, rx=back)])])
    with psycopg.connect(database_url, autocommit=True) as conn:
        # device_liveness.last_seen is the receive time; the test's clock is in the past, so set it
        conn.execute("update device_liveness set last_seen = %s", (back,))
    cleared = await check_liveness(pool, models, store, back + timedelta(seconds=10), cfg)
    assert [(k, a.rule) for k, a in cleared] == [("clear", OFFLINE_RULE)]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select rule, state from alerts order by opened_at").fetchall()
        assert rows == [(STALE_RULE, "resolved"), (OFFLINE_RULE, "resolved")]
        assert conn.execute("select count(*) from alert_outbox").fetchone() == (4,)


async def test_anomalies_alert_once_across_a_restart(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    pub = _Publisher()
    await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
    t0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    values = _series()
    records = [
        encode_batch([_telemetry(t0 + timedelta(minutes=i), values[i]) for i in range(b, min(b + 8, len(values)))])
        for b in range(0, len(values), 8)
    ]
    first = _pipeline(pool, models, pub)
    for rec in records[:6]:  # up to sample 47: the spike (45) is in
        await first.process([rec])
    # "restart": a new worker replays the last two records (offsets not committed) and goes on
    second = _pipeline(pool, models, pub)
    for rec in records[4:]:
        await second.process([rec])
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select rule, state, opened_at, labels->>'detector', (labels->>'score')::float8 > threshold,"
            " labels->>'detectors' from alerts order by rule"
        ).fetchall()
        states = conn.execute("select count(*) from anomaly_state").fetchone()
    spike = t0 + timedelta(minutes=45)
    # both detectors fire on the spike: one alert for the series, naming both
    assert rows == [("anomaly.ewma", "resolved", spike, "ewma", True, "ewma,robust_z")]
    assert states == (1,)
    published = [json.loads(v) for v in pub.on("t.alerts")]
    assert sorted((d["rule"], d["transition"]) for d in published) == [
        ("anomaly.ewma", "clear"),
        ("anomaly.ewma", "open"),
    ]


async def test_alerts_role_over_the_readings_topic_gives_the_same_alerts(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    pub = _Publisher()
    alerts = _pipeline(pool, models, pub)
    await alerts.refresh_index(force=True)  # loaded before the device exists: stale when its readings come
    await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
    ingest = _pipeline(pool, models, pub, evaluate=False)
    t0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    values = _series()
    values[50] = 120.0  # a rule too: air.pm25.high
    msgs = [_telemetry(t0 + timedelta(minutes=i), v) for i, v in enumerate(values)]
    await ingest.process([encode_batch(msgs)])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from alerts").fetchone() == (0,)  # ingest raises nothing
    docs = pub.on("t.readings.air")
    assert await alerts.process_readings(docs) == len(values)
    assert await alerts.process_readings(docs) == len(values)  # a replay: evaluated, but nothing new
    with psycopg.connect(database_url) as conn:
        rules = [r[0] for r in conn.execute("select rule from alerts order by opened_at, rule").fetchall()]
    # the jump at 50 comes while the series' anomaly alert is still open (clear_after 5): no new one
    assert rules == ["anomaly.ewma", "air.pm25.high"]
    assert len([v for v in pub.on("t.alerts") if json.loads(v)["transition"] == "open"]) == 2


async def test_an_impossible_value_is_one_anomaly_alert_and_no_threshold_alert(
    database_url: str, models: ModelRegistry, pool: AsyncConnectionPool
) -> None:
    """PM2.5 5000 (range 0–1000) is a sensor fault: the detectors say so once, the rules stay quiet."""
    pub = _Publisher()
    await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
    t0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    values = _series()
    values[45] = 5000.0
    pipe = _pipeline(pool, models, pub)
    await pipe.process([encode_batch([_telemetry(t0 + timedelta(minutes=i), v) for i, v in enumerate(values)])])
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("select pm25, flags from readings_air where pm25 > 1000").fetchall()
        rows = conn.execute("select rule, value, labels->>'detectors' from alerts").fetchall()
    assert stored == [(5000.0, {"pm25": "suspect"})]  # stored as sent, flagged
    assert len(rows) == 1 and rows[0][0].startswith("anomaly.") and rows[0][1] == 5000.0
    assert rows[0][2] == "ewma,robust_z"
