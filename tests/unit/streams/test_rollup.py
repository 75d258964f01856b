"""Rollup, retention and TimescaleDB helpers that need no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from streams import retention, rollup, timescale
from streams.errors import MaintenanceError
from streams.store import StoreConfig, dirty_buckets, partition_name

T0 = datetime(2026, 11, 29, tzinfo=UTC)
FIVE = timedelta(minutes=5)


def test_merge_ranges_coalesces_adjacent_buckets() -> None:
    b = [T0, T0 + FIVE, T0 + 2 * FIVE, T0 + 10 * FIVE, T0 + FIVE]
    assert rollup.merge_ranges(b, FIVE) == [(T0, T0 + 3 * FIVE), (T0 + 10 * FIVE, T0 + 11 * FIVE)]
    assert rollup.merge_ranges([], FIVE) == []


def test_floor_aligns_on_utc_midnight() -> None:
    t = T0 + timedelta(hours=13, minutes=7, seconds=3)
    assert rollup.resolution("5m").floor(t) == T0 + timedelta(hours=13, minutes=5)
    assert rollup.resolution("1h").floor(t) == T0 + timedelta(hours=13)
    assert rollup.resolution("1d").floor(t) == T0
    with pytest.raises(MaintenanceError):
        rollup.resolution("2h")


def test_dirty_buckets_are_distinct_five_minute_starts() -> None:
    times = [T0 + timedelta(seconds=s) for s in (0, 10, 299, 300, 86_400)]
    assert dirty_buckets(times) == [T0, T0 + FIVE, T0 + timedelta(days=1)]


def test_retention_cutoff_and_partitions_to_drop() -> None:
    now = T0 + timedelta(hours=5)
    cutoff = retention.retention_cutoff(now, 30)
    assert cutoff == date(2026, 10, 30)
    parts = [(partition_name("air", date(2026, 10, d)), date(2026, 10, d)) for d in (28, 29, 30, 31)]
    assert retention.partitions_to_drop(parts, cutoff) == ["readings_air_20261028", "readings_air_20261029"]
    with pytest.raises(MaintenanceError):
        retention.retention_cutoff(now, 0)


def test_days_ahead_includes_today() -> None:
    days = retention.days_ahead(T0 + timedelta(hours=23), 7)
    assert days[0] == date(2026, 11, 29) and days[-1] == date(2026, 12, 6) and len(days) == 8


def test_rollup_ddl_has_four_columns_per_metric() -> None:
    text = " ".join(s.as_string(None) for s in rollup.create_rollup_tables_sql("air", ["pm25"]))
    for col in rollup.rollup_columns("pm25"):
        assert f'"{col}"' in text
    for res in ("5m", "1h", "1d"):
        assert f'"rollup_air_{res}"' in text


def test_timescale_sql_uses_the_plain_names() -> None:
    text = timescale.continuous_aggregate_sql("air", ["pm25"], "1h").as_string(None)
    assert '"rollup_air_1h"' in text and "time_bucket(interval '1 hour'" in text and "timescaledb.continuous" in text
    assert "chunk_time_interval => interval '1 day'" in timescale.hypertable_sql("readings_air").as_string(None)
    assert any("compress_segmentby" in s.as_string(None) for s in timescale.compression_sql("readings_air", FIVE))
    assert "add_continuous_aggregate_policy" in timescale.refresh_policy_sql("air", "5m").as_string(None)


def test_store_config_validates() -> None:
    with pytest.raises(ValueError):
        StoreConfig(batch_rows=0)
