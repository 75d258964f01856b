"""Store and pipeline on real PostgreSQL: idempotent writes, late data, alerts once."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.sql
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly.config import parse_anomaly_config
from alerts.rules import RuleSet, shipped_rules
from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from streams.debug import VIEW_CAPTURE, Capture, CaptureSet, start_capture
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics
from tests.integration.helpers import RecordingPublisher, await_for

pytestmark = pytest.mark.integration

CODE = "35020603080000017"
# Data is built relative to the day the test runs (times of yesterday) and the pipeline
# reads an injected clock at noon of that day: no assertion depends on today's date.
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
NOW = DAY + timedelta(hours=12)


def _raw(t: datetime, metrics: dict, ts_format: str = "iso", rx: datetime | None = None) -> RawMessage:
    return RawMessage(
        f"citybrain/up/{CODE}/telemetry",
        encode(t, metrics, ts_format=ts_format),
        rx or NOW,
        Transport.MQTT,
        CODE,
    )


async def _pipeline(database_url: str, models: ModelRegistry, pub: RecordingPublisher, **kw: Any):
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    reg = CollectorRegistry()
    clock = kw.pop("clock", lambda: NOW)
    pipe = Pipeline(
        PipelineConfig(topics=KafkaTopics("t"), **({"rules": shipped_rules()} | kw)),
        pool,
        models,
        pub,
        PipelineMetrics(reg),
        ReadingStore(pool, models, StoreMetrics(reg)),
        clock=clock,
    )
    await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
    return pool, pipe


async def test_replayed_batch_stores_no_duplicates_and_alerts_once(database_url: str, models: ModelRegistry) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        t0 = DAY + timedelta(hours=0)
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


@pytest.mark.plain_partitions("checks the day partition a row lands in (a hypertable makes its own chunks)")
async def test_late_data_lands_in_its_own_day_partition(database_url: str, models: ModelRegistry) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        late = DAY - timedelta(days=100) + timedelta(hours=12)  # late, and well inside retention
        await pipe.process([encode_batch([_raw(late, {"pm25": 12})])])
        with psycopg.connect(database_url) as conn:
            row = conn.execute("select tableoid::regclass::text from readings_air").fetchone()
        assert row == (f"readings_air_{late:%Y%m%d}",)
        # The per-district freshness gauge (Prometheus "no data from a district") follows event time.
        gauge = pipe.metrics.last_event.labels(CODE[:6], "air")._value.get()
        assert gauge == late.timestamp()
    finally:
        await pool.close()


async def test_the_district_freshness_gauge_is_capped_at_the_pipelines_clock(
    database_url: str, models: ModelRegistry
) -> None:
    """A device clock an hour fast does not make its district look fresher than now (the injected clock)."""
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        await pipe.process([encode_batch([_raw(NOW + timedelta(hours=1), {"pm25": 12})])])
        assert pipe.metrics.last_event.labels(CODE[:6], "air")._value.get() == NOW.timestamp()
    finally:
        await pool.close()


async def test_a_device_registered_after_the_index_loaded_is_not_dead_lettered(
    database_url: str, models: ModelRegistry
) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        t0 = DAY + timedelta(hours=1)
        await pipe.process([encode_batch([_raw(t0, {"pm25": 10})])])  # loads the index
        fresh = "35020603080000025"
        await Ledger(pool, models).register(NewDevice(fresh, "air-station"))
        # Inside the periodic refresh interval, past the unknown-device reload guard.
        pipe._index_loaded -= 1.2
        msg = RawMessage(f"citybrain/up/{fresh}/telemetry", encode(t0, {"pm25": 11}), NOW, Transport.MQTT, fresh)
        await pipe.process([encode_batch([msg])])
        assert not pub.on("t.deadletter")
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select count(*) from readings_air where device_code = %s", (fresh,)).fetchone() == (1,)
    finally:
        await pool.close()


async def test_rules_replaced_at_run_time_apply_from_the_next_batch(database_url: str, models: ModelRegistry) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub, rules=RuleSet(()))
    try:
        t0 = DAY + timedelta(hours=2)
        await pipe.process([encode_batch([_raw(t0, {"pm25": 90})])])
        pipe.replace_rules(shipped_rules())  # what the worker's reload timer does
        await pipe.process([encode_batch([_raw(t0 + timedelta(minutes=1), {"pm25": 95})])])
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("select rule, state from alerts where device_code = %s", (CODE,)).fetchall()
        assert rows == [("air.pm25.high", "open")]
    finally:
        await pool.close()


async def test_a_database_refusing_writes_holds_the_batch_and_loses_nothing(
    database_url: str, models: ModelRegistry
) -> None:
    """PostgreSQL read-only (a failover, a full disk's emergency mode): the batch waits, then lands once.

    The worker does not return from the batch, so its Kafka offsets stay uncommitted and
    the consumer lag shows the backlog; the raw topic is the buffer (the gateway keeps
    acknowledging MQTT only after Kafka has each message, as ever).
    """
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]

    def read_only(on: bool) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("set default_transaction_read_only = off")  # this session may still write
            conn.execute(
                psycopg.sql.SQL("alter database {} set default_transaction_read_only = {}").format(
                    psycopg.sql.Identifier(str(dbname)), psycopg.sql.SQL("on" if on else "off")
                )
            )
            # Sessions pick the setting up when they start: end the pool's.
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = current_database() and pid <> pg_backend_pid()"
            )

    try:
        t0 = DAY + timedelta(hours=3)
        await pipe.process([encode_batch([_raw(t0, {"pm25": 10})])])  # warm: index loaded, device active
        read_only(True)
        batch = encode_batch([_raw(t0 + timedelta(minutes=i), {"pm25": 20 + i}) for i in range(1, 4)])
        task = asyncio.create_task(pipe.process([batch]))
        # The retry counter is the signal: the batch was refused twice and is still held.
        assert await await_for(lambda: pipe.metrics.store_retries._value.get() >= 2, timeout=30)
        assert not task.done(), "the batch must wait for the database, not be skipped"
        assert not pub.on("t.deadletter")
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select count(*) from readings_air").fetchone() == (1,)
        read_only(False)
        await asyncio.wait_for(task, 60)
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select count(*) from readings_air").fetchone() == (4,)
        assert not pub.on("t.deadletter")
    finally:
        with contextlib.suppress(psycopg.Error):
            read_only(False)
        await pool.close()


async def test_bad_payloads_are_dead_lettered_with_reason(database_url: str, models: ModelRegistry) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        bad = RawMessage(f"citybrain/up/{CODE}/telemetry", b"{not json", NOW, Transport.MQTT, CODE)
        await pipe.process([encode_batch([bad]), b"garbage record"])
        reasons = sorted(dict(h)["reason"].decode() for t, _, _, h in pub.sent if t == "t.deadletter")
        assert reasons == ["bad_batch", "bad_json"]
        originals = [v for t, _, v, _ in pub.sent if t == "t.deadletter"]
        assert b"{not json" in originals and b"garbage record" in originals
    finally:
        await pool.close()


EWMA = parse_anomaly_config("series: [{class: air, metrics: [pm25], detectors: {ewma: {}}}]")


@pytest.mark.parametrize("role", ["all", "split"])
async def test_a_clock_skewed_reading_is_stored_but_moves_no_watermark(
    database_url: str, models: ModelRegistry, role: str
) -> None:
    """A device clock two hours ahead, then correct readings crossing the limit: the alert still opens."""
    now = DAY + timedelta(hours=10)
    t = [now - timedelta(minutes=3 - i) for i in range(3)]
    batches = [
        [_raw(now + timedelta(hours=2), {"pm25": 20}, rx=now)],  # skewed: flagged suspect, stored
        [_raw(t[0], {"pm25": 30}, rx=t[0]), _raw(t[1], {"pm25": 31}, rx=t[1])],
        [_raw(t[2], {"pm25": 90}, rx=t[2])],  # over air.pm25.high
    ]
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub, anomaly=EWMA, evaluate=role == "all", clock=lambda: now)
    try:
        for batch in batches:
            await pipe.process([encode_batch(batch)])
        if role == "split":
            # An alerts worker, an hour later, over the readings topic: judged by event vs receive time.
            _, alerts = await _pipeline(
                database_url, models, RecordingPublisher(), anomaly=EWMA, clock=lambda: now + timedelta(hours=1)
            )
            try:
                for doc in pub.on("t.readings.air"):
                    await alerts.process_readings([doc])
            finally:
                await alerts.pool.close()
        with psycopg.connect(database_url) as conn:
            stored = conn.execute("select ts, quality, flags from readings_air order by ts").fetchall()
            opened = conn.execute("select rule, state, value, opened_at from alerts").fetchall()
            wm = conn.execute("select watermark_us from rule_state").fetchone()
            doc = conn.execute("select states from anomaly_state").fetchone()
        assert len(stored) == 4 and stored[-1][0] == now + timedelta(hours=2)  # stored, flagged
        assert stored[-1][1] > 0 and stored[-1][2] == {"pm25": "suspect"}
        assert opened == [("air.pm25.high", "open", 90.0, t[2])]
        assert wm == (int(t[2].timestamp() * 1_000_000),)  # the watermark never went past now
        assert doc is not None and doc[0]["m"]["pm25"]["t"] == int(t[2].timestamp())
    finally:
        await pool.close()


async def test_a_derived_indicator_that_cannot_be_computed_is_counted(
    database_url: str, models: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the IndicatorError of an AQI that could not be computed was swallowed.
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        code = "35020603080000025"
        await Ledger(pool, models).register(NewDevice(code, "air-station", attributes={"aqi_version": "HJ633-2012"}))
        t0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
        # HJ 633-2012 defines no 1 h IAQI for SO2 above 800 µg/m³.
        msg = RawMessage(f"citybrain/up/{code}/telemetry", encode(t0, {"so2": 900}), t0, Transport.MQTT, code)
        await pipe.process([encode_batch([msg])])
        assert pipe.metrics.derive_errors.labels("air")._value.get() == 1
        assert code in caplog.text and "so2" in caplog.text
    finally:
        await pool.close()


@pytest.mark.parametrize("capture", list(Capture))
async def test_the_debug_ring_gets_each_captured_devices_newest_message_and_its_outcome(
    database_url: str, models: ModelRegistry, capture: Capture
) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub, debug_capture=capture, debug_refresh_s=0.0)
    other = "35020603080000025"
    try:
        await Ledger(pool, models).register(NewDevice(other, "air-station"))
        async with pool.connection() as conn:
            # Someone opened CODE's debug view; nobody is debugging `other`.
            await start_capture(conn, [CODE], NOW + VIEW_CAPTURE, "test")
        good = _raw(DAY, {"pm25": 30}, rx=NOW)
        passer_by = RawMessage(f"citybrain/up/{other}/telemetry", encode(DAY, {"pm25": 31}), NOW, Transport.MQTT, other)
        await pipe.process([encode_batch([good, passer_by])])
        bad = RawMessage(
            f"citybrain/up/{CODE}/telemetry", b"{not json", NOW + timedelta(seconds=1), Transport.MQTT, CODE
        )
        await pipe.process([encode_batch([bad])])
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "select code, slot, reject_reason, readings from device_recent_messages order by code, slot"
            ).fetchall()
        recorded = pipe.metrics.debug_recorded._value.get()
        captured = pipe.metrics.debug_captured._value.get()
        assert (recorded, captured) == {Capture.OFF: (0, 0), Capture.ON_DEMAND: (2, 1), Capture.ALL: (3, -1)}[capture]
        if capture is Capture.OFF:  # CITYBRAIN_DEBUG_CAPTURE=off
            assert rows == []
            return
        mine = [(slot, reason) for code, slot, reason, _ in rows if code == CODE]
        assert mine == [(0, None), (1, "bad_json")]
        assert rows[0][3][0]["metric"] == "pm25" and rows[0][3][0]["value"] == 30.0
        # on_demand keeps only the captured device's messages; all keeps every device's.
        assert any(code == other for code, *_ in rows) is (capture is Capture.ALL)
    finally:
        await pool.close()


async def test_a_capture_started_after_the_worker_read_the_captures_applies_at_the_next_refresh(
    database_url: str, models: ModelRegistry
) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    ticks = [0.0]
    pipe.captures = CaptureSet(Capture.ON_DEMAND, refresh_s=2.0, monotonic=lambda: ticks[0])
    try:
        await pipe.process([encode_batch([_raw(DAY, {"pm25": 30}, rx=NOW)])])
        async with pool.connection() as conn:
            await start_capture(conn, [CODE], NOW + VIEW_CAPTURE, "test")
        ticks[0] = 1.0  # within refresh_s: the worker still has the captures it read
        await pipe.process([encode_batch([_raw(DAY + timedelta(minutes=1), {"pm25": 31}, rx=NOW)])])
        ticks[0] = 2.5
        await pipe.process([encode_batch([_raw(DAY + timedelta(minutes=2), {"pm25": 32}, rx=NOW)])])
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("select readings from device_recent_messages where code = %s", (CODE,)).fetchall()
        assert [r[0][0]["value"] for r in rows] == [32.0]
        # An ended capture stops the ring at the next refresh.
        with psycopg.connect(database_url) as conn:
            conn.execute("update debug_captures set until = %s", (NOW - timedelta(seconds=1),))
        ticks[0] = 5.0
        await pipe.process([encode_batch([_raw(DAY + timedelta(minutes=3), {"pm25": 33}, rx=NOW)])])
        with psycopg.connect(database_url) as conn:
            n = conn.execute("select count(*) from device_recent_messages").fetchone()
        assert n == (1,)
    finally:
        await pool.close()


async def test_state_kept_in_memory_is_trusted_only_at_the_rows_version(
    database_url: str, models: ModelRegistry
) -> None:
    """Two workers on one device (a rebalance): each sees the other's writes, never its own stale copy."""
    pub_a, pub_b = RecordingPublisher(), RecordingPublisher()
    pool_a, a = await _pipeline(database_url, models, pub_a)
    pool_b = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool_b.open(wait=True)
    reg = CollectorRegistry()
    b = Pipeline(
        PipelineConfig(topics=KafkaTopics("t"), rules=shipped_rules()),
        pool_b,
        models,
        pub_b,
        PipelineMetrics(reg),
        ReadingStore(pool_b, models, StoreMetrics(reg)),
        clock=lambda: NOW,
    )
    try:
        t0 = DAY + timedelta(hours=3)
        await a.process([encode_batch([_raw(t0, {"pm25": 30})])])
        await a.process([encode_batch([_raw(t0 + timedelta(minutes=1), {"pm25": 31})])])
        assert a.rule_cache.hits >= 1  # the second batch read its state from memory
        # Worker B takes the partition over and raises an alert.
        late = [_raw(t0 + timedelta(minutes=2 + i), {"pm25": 95}) for i in range(3)]
        await b.process([encode_batch(late)])
        misses = a.rule_cache.misses
        # A gets a replay of B's batch: its cached state (watermark at minute 1) is stale.
        await a.process([encode_batch(late)])
        assert a.rule_cache.misses > misses
        assert not pub_a.on("t.alerts")  # nothing evaluated twice
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("select rule, state from alerts where device_code = %s", (CODE,)).fetchall()
            wm = conn.execute("select watermark_us, version from rule_state where device_code = %s", (CODE,)).fetchone()
        assert rows == [("air.pm25.high", "open")]
        assert wm is not None and wm[0] == int((t0 + timedelta(minutes=4)).timestamp() * 1_000_000)
    finally:
        await pool_a.close()
        await pool_b.close()


async def test_a_batch_that_does_not_commit_leaves_nothing_in_memory(database_url: str, models: ModelRegistry) -> None:
    pub = RecordingPublisher()
    pool, pipe = await _pipeline(database_url, models, pub)
    try:
        t0 = DAY + timedelta(hours=4)
        await pipe.process([encode_batch([_raw(t0, {"pm25": 30})])])
        assert len(pipe.rule_cache) == 1

        async def refuse(*_: Any) -> None:
            raise psycopg.errors.QueryCanceled("cancelled by the test")

        pipe.alerts.apply = refuse  # type: ignore[method-assign]
        with pytest.raises(psycopg.errors.QueryCanceled):
            await pipe.evaluate(
                [(r, pipe.index.get(CODE)) for r in _readings(t0 + timedelta(minutes=1), 95.0)]  # type: ignore[misc]
            )
        assert len(pipe.rule_cache) == 0 and len(pipe.anomaly_cache) == 0
    finally:
        await pool.close()


def _readings(t: datetime, pm25: float) -> list[Any]:
    from core.records import Reading

    return [Reading(CODE, "pm25", t, t, pm25, "ug/m3")]
