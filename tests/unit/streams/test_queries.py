"""Pure query planning and SQL builders (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams import queries
from streams.errors import QueryError
from streams.queries import MetricSource

T0 = datetime(2026, 11, 29, tzinfo=UTC)
WIDE = MetricSource("air", "pm25", True, frozenset({"5m", "1h", "1d"}))
NARROW = MetricSource("air", "pm1", False, frozenset())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("15min", 900), ("1h", 3600), ("2 hours", 7200), ("1d", 86400), ("7days", 604800)],
)
def test_parse_bucket(text: str, seconds: int) -> None:
    assert queries.parse_bucket(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "0m", "1w", "-5m", "5.5m"])
def test_parse_bucket_rejects(text: str) -> None:
    with pytest.raises(QueryError):
        queries.parse_bucket(text)


def test_from_after_to_is_rejected() -> None:
    with pytest.raises(QueryError, match="before"):
        queries.check_range(T0, T0 - timedelta(seconds=1))
    with pytest.raises(QueryError, match="before"):
        queries.check_range(T0, T0)


def test_too_many_points_is_rejected() -> None:
    with pytest.raises(QueryError, match="at most 10000"):
        queries.plan_buckets(WIDE, T0, T0 + timedelta(days=365), timedelta(minutes=1))


def test_plan_picks_the_coarsest_rollup_that_divides_the_bucket() -> None:
    day = T0 + timedelta(days=1)
    assert queries.plan_buckets(WIDE, T0, day, timedelta(minutes=5)).rollup.name == "5m"  # type: ignore[union-attr]
    assert queries.plan_buckets(WIDE, T0, day, timedelta(minutes=15)).rollup.name == "5m"  # type: ignore[union-attr]
    assert queries.plan_buckets(WIDE, T0, day, timedelta(hours=3)).rollup.name == "1h"  # type: ignore[union-attr]
    assert queries.plan_buckets(WIDE, T0, day + timedelta(days=6), timedelta(days=1)).rollup.name == "1d"  # type: ignore[union-attr]


def test_plan_falls_back_to_raw() -> None:
    day = T0 + timedelta(days=1)
    assert queries.plan_buckets(WIDE, T0, day, timedelta(minutes=1)).rollup is None  # finer than 5 min
    assert queries.plan_buckets(WIDE, T0, day, timedelta(minutes=7)).rollup is None  # not a multiple
    off = T0 + timedelta(minutes=2)
    assert queries.plan_buckets(WIDE, off, day, timedelta(hours=1)).rollup is None  # edge not aligned
    assert queries.plan_buckets(NARROW, T0, day, timedelta(hours=1)).rollup is None  # no rollup columns
    assert queries.plan_buckets(WIDE, T0, day, timedelta(hours=1), source="raw").rollup is None


def test_plan_rollup_forced_but_impossible() -> None:
    with pytest.raises(QueryError, match="no rollup"):
        queries.plan_buckets(WIDE, T0, T0 + timedelta(hours=1), timedelta(minutes=1), source="rollup")


def test_cursor_round_trip_and_garbage() -> None:
    c = queries.Cursor(T0 + timedelta(microseconds=123), "35020603080000017")
    assert queries.decode_cursor(queries.encode_cursor(c)) == c
    with pytest.raises(QueryError):
        queries.decode_cursor("not a cursor!")


def test_builders_render_and_quote_identifiers() -> None:
    plan = queries.plan_buckets(WIDE, T0, T0 + timedelta(days=1), timedelta(hours=1))
    text = queries.bucketed_sql(WIDE, plan).as_string(None)
    assert '"rollup_air_1h"' in text and "date_bin" in text and '"pm25_count" > 0' in text
    raw = queries.plan_buckets(WIDE, T0, T0 + timedelta(days=1), timedelta(minutes=1))
    text = queries.bucketed_sql(WIDE, raw).as_string(None)
    assert '"readings_air"' in text and "starts_with" in text
    ts = MetricSource("air", "pm25", True, frozenset({"1h"}), timescale=True)
    assert "time_bucket" in queries.bucketed_sql(ts, plan).as_string(None)
    assert '"readings_extra"' in queries.points_sql(NARROW, after=True).as_string(None)
    text = queries.export_sql("air", ["pm25"], device=False, district=True, after=True, limit=True).as_string(None)
    assert "(r.ts, r.device_code) > (%(after_ts)s, %(after_d)s)" in text and "order by r.ts, r.device_code" in text
    assert "lateral" in queries.latest_sql("air", ["pm25"], district=True, after=False).as_string(None)
    assert "union all" in queries.class_stats_sql([WIDE, NARROW]).as_string(None)
    assert "null::float8" in queries.district_stats_sql(None).as_string(None)
