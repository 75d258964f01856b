"""Offline detection on real PostgreSQL: silence opens one alert, data flowing again clears it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from alerts.store import AlertStore
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from streams.liveness import OFFLINE_RULE, LivenessConfig, check_liveness

pytestmark = pytest.mark.integration

CODE = "35020603080000017"  # air station: cadence 60 s


async def test_silent_device_goes_offline_once_and_recovers(database_url: str, models: ModelRegistry) -> None:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
        now = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("update devices set state = 'active' where code = %s", (CODE,))
            # silent for 10 minutes: 10 cadences > k = 5
            conn.execute(
                "insert into device_liveness (code, last_seen, last_event_time) values (%s, %s, %s)",
                (CODE, now - timedelta(minutes=10), now - timedelta(minutes=10)),
            )
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
    finally:
        await pool.close()


async def test_a_device_that_reports_on_time_is_never_offline(database_url: str, models: ModelRegistry) -> None:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
        now = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("update devices set state = 'active' where code = %s", (CODE,))
            conn.execute(
                "insert into device_liveness (code, last_seen, last_event_time) values (%s, %s, %s)",
                (CODE, now - timedelta(minutes=2), now - timedelta(minutes=2)),
            )
        assert await check_liveness(pool, models, AlertStore(pool), now, LivenessConfig(k=5)) == []
    finally:
        await pool.close()
