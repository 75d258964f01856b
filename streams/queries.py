"""Read queries over readings and rollups: pure SQL builders plus async executors.

The builders return :class:`psycopg.sql.Composed` objects and parameter dicts;
they do no I/O and are unit-tested by rendering. The executors run them on a
connection passed in. The same API works on plain PostgreSQL and on
TimescaleDB: a :class:`Catalog` read from the database says where each metric
lives (a wide column or ``readings_extra``), which rollup levels carry it and
whether to bucket with ``date_bin`` or ``time_bucket``.

Aggregates leave out values flagged ``bad`` (as the rollups do), so a series
answered from raw rows and one answered from a rollup agree.

Rollups are as fresh as the last maintenance run (plain PostgreSQL) or the
refresh policy (TimescaleDB). ``source="raw"`` forces the raw rows.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from core.tables import class_table
from devices.models import ModelRegistry
from streams.errors import QueryError
from streams.rollup import BUCKET_ORIGIN, RESOLUTIONS, Resolution, metric_value_expr, rollup_columns, rollup_table
from streams.store import EXTRA_TABLE, load_layout

__all__ = [
    "MAX_POINTS",
    "SKEW_FILTER",
    "Bucket",
    "BucketPlan",
    "Catalog",
    "CatalogCache",
    "Cursor",
    "MetricSource",
    "bucketed_sql",
    "check_range",
    "class_stats_sql",
    "decode_cursor",
    "district_stats_sql",
    "encode_cursor",
    "export_rows",
    "export_sql",
    "fetch_buckets",
    "latest_sql",
    "parse_bucket",
    "plan_buckets",
    "points_sql",
]

MAX_POINTS = 10_000
Source = Literal["auto", "raw", "rollup"]
_BUCKET_RE = re.compile(r"^\s*(\d{1,6})\s*(s|sec|m|min|h|hour|d|day)s?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class MetricSource:
    """Where one metric of one class is stored.

    Attributes:
        device_class: The class.
        metric: The metric.
        wide: True for a column of ``readings_{class}``, False for ``readings_extra``.
        rollups: Rollup levels that carry the metric (``5m``, ``1h``, ``1d``).
        timescale: Bucket with ``time_bucket`` (TimescaleDB) instead of ``date_bin``.
    """

    device_class: str
    metric: str
    wide: bool
    rollups: frozenset[str]
    timescale: bool = False


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the database holds per class: wide columns, rollup columns, TimescaleDB."""

    models: ModelRegistry
    wide: dict[str, frozenset[str]]
    rollups: dict[tuple[str, str], frozenset[str]]
    timescale: frozenset[str]

    @classmethod
    async def load(cls, conn: psycopg.AsyncConnection, models: ModelRegistry) -> Catalog:
        """Read the catalog (a few catalog queries; cache the result)."""
        classes = models.device_classes()
        layouts = await load_layout(conn, classes)
        names = [rollup_table(c, r.name) for c in classes for r in RESOLUTIONS]
        cur = await conn.execute(
            "select c.relname, a.attname from pg_class c join pg_attribute a on a.attrelid = c.oid"
            " where c.relname = any(%s) and c.relnamespace = current_schema()::regnamespace"
            " and a.attnum > 0 and not a.attisdropped",
            (names,),
        )
        cols: dict[str, set[str]] = {}
        for rel, att in await cur.fetchall():
            cols.setdefault(rel, set()).add(att)
        rollups: dict[tuple[str, str], frozenset[str]] = {}
        for c in classes:
            for r in RESOLUTIONS:
                have = cols.get(rollup_table(c, r.name), set())
                rollups[(c, r.name)] = frozenset(m[: -len("_count")] for m in have if m.endswith("_count"))
        return cls(
            models,
            {c: frozenset(lay.wide) for c, lay in layouts.items()},
            rollups,
            frozenset(c for c, lay in layouts.items() if not lay.partitioned),
        )

    def source(self, device_class: str, metric: str) -> MetricSource:
        """Where ``metric`` of ``device_class`` lives.

        Raises:
            QueryError: the metric is not a metric of the class.
        """
        if metric not in self.models.metrics_of_class(device_class):
            raise QueryError(f"metric {metric!r} is not a metric of class {device_class}")
        wide = metric in self.wide.get(device_class, frozenset())
        levels = frozenset(r.name for r in RESOLUTIONS if metric in self.rollups.get((device_class, r.name), ()))
        return MetricSource(device_class, metric, wide, levels if wide else frozenset(), device_class in self.timescale)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One aggregated bucket of a series."""

    start: datetime
    avg: float | None
    min: float | None
    max: float | None
    count: int


@dataclass(frozen=True, slots=True)
class BucketPlan:
    """How a bucketed query is answered.

    Attributes:
        width: Bucket width asked for.
        points: Buckets the range spans.
        rollup: The rollup level read (None: raw rows).
    """

    width: timedelta
    points: int
    rollup: Resolution | None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the last (event time, device) a page returned."""

    ts: datetime
    device: str


def encode_cursor(c: Cursor) -> str:
    """Opaque, URL-safe text of a cursor."""
    us = (c.ts - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{us}|{c.device}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Parse :func:`encode_cursor` output.

    Raises:
        QueryError: not a cursor this API issued.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        us, device = raw.split("|", 1)
        return Cursor(_EPOCH + timedelta(microseconds=int(us)), device)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(f"bad cursor {text!r}") from exc


def parse_bucket(text: str) -> timedelta:
    """``30s``, ``5m``, ``15min``, ``1h``, ``1d`` → a bucket width.

    Raises:
        QueryError: not a width, or zero.
    """
    m = _BUCKET_RE.match(text)
    if not m:
        raise QueryError(f"bad bucket {text!r}: use a number and s, m, h or d (e.g. 5m, 1h)")
    seconds = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if seconds == 0:
        raise QueryError("bucket must be positive")
    return timedelta(seconds=seconds)


def check_range(lo: datetime, hi: datetime) -> None:
    """Raise :class:`QueryError` unless ``lo < hi``, both aware."""
    if lo.tzinfo is None or hi.tzinfo is None:
        raise QueryError("from and to need a time zone (e.g. Z or +08:00)")
    if lo >= hi:
        raise QueryError(f"from ({lo.isoformat()}) must be before to ({hi.isoformat()})")


def _aligned(t: datetime, width: timedelta) -> bool:
    return (t - BUCKET_ORIGIN) % width == timedelta(0)


def plan_buckets(
    src: MetricSource,
    lo: datetime,
    hi: datetime,
    width: timedelta,
    *,
    source: Source = "auto",
    max_points: int = MAX_POINTS,
) -> BucketPlan:
    """Check a bucketed query and pick the coarsest rollup that answers it exactly.

    A rollup of width ``w`` is used when ``w`` divides the bucket and both ends
    of the range fall on ``w`` boundaries, so no rollup bucket straddles an edge.

    Raises:
        QueryError: bad range, too many points, or ``source="rollup"`` impossible.
    """
    check_range(lo, hi)
    points = math.ceil((hi - lo) / width)
    if points > max_points:
        raise QueryError(
            f"{points} buckets of {width} in the range; at most {max_points}: widen the bucket or narrow the range"
        )
    chosen: Resolution | None = None
    if source != "raw":
        for res in RESOLUTIONS:
            if (
                res.name in src.rollups
                and width >= res.width
                and width % res.width == timedelta(0)
                and _aligned(lo, res.width)
                and _aligned(hi, res.width)
            ):
                chosen = res  # RESOLUTIONS is finest first: the last match is the coarsest
    if source == "rollup" and chosen is None:
        raise QueryError(
            f"no rollup answers {src.metric} in buckets of {width} from {lo.isoformat()} to {hi.isoformat()}"
            " (the bucket must be a multiple of 5m, 1h or 1d and the range aligned to it)"
        )
    return BucketPlan(width, points, chosen)


def _bin(width: timedelta, column: sql.Composable, timescale: bool) -> sql.Composed:
    w = sql.Literal(f"{int(width.total_seconds())} seconds")
    fn = "time_bucket" if timescale else "date_bin"
    return sql.SQL("{}({}::interval, {}, {})").format(sql.SQL(fn), w, column, sql.Literal(BUCKET_ORIGIN))


def bucketed_sql(src: MetricSource, plan: BucketPlan) -> sql.Composed:
    """One device's series in buckets: (start, avg, min, max, count); params ``d``, ``lo``, ``hi``."""
    if plan.rollup is not None:
        avg, mn, mx, cnt = (sql.Identifier(c) for c in rollup_columns(src.metric))
        return sql.SQL(
            "select {b} as start, sum({a} * {c}) / nullif(sum({c}), 0), min({mn}), max({mx}), sum({c})::bigint"
            " from {t} where device_code = %(d)s and bucket >= %(lo)s and bucket < %(hi)s and {c} > 0"
            " group by 1 order by 1"
        ).format(
            b=_bin(plan.width, sql.Identifier("bucket"), src.timescale),
            a=avg,
            c=cnt,
            mn=mn,
            mx=mx,
            t=sql.Identifier(rollup_table(src.device_class, plan.rollup.name)),
        )
    inner = _raw_values(src)
    return sql.SQL(
        "select {b} as start, avg(v), min(v), max(v), count(v) from ({inner}) as s"
        " where v is not null group by 1 order by 1"
    ).format(b=_bin(plan.width, sql.Identifier("ts"), src.timescale), inner=inner)


def _raw_values(src: MetricSource) -> sql.Composed:
    """(ts, v) of one device's metric in [lo, hi), bad values as NULL."""
    if src.wide:
        return sql.SQL(
            "select ts, {v} as v from {t} where device_code = %(d)s and ts >= %(lo)s and ts < %(hi)s"
        ).format(v=metric_value_expr(src.metric), t=sql.Identifier(class_table(src.device_class)))
    return sql.SQL(
        "select ts, case when quality >= 2 then null else value end as v from {t}"
        " where device_code = %(d)s and metric = {m} and ts >= %(lo)s and ts < %(hi)s"
    ).format(t=sql.Identifier(EXTRA_TABLE), m=sql.Literal(src.metric))


def points_sql(src: MetricSource, *, after: bool) -> sql.Composed:
    """Raw points of one device's metric in [lo, hi): (ts, rx, value, quality label, flag text).

    Params ``d``, ``lo``, ``hi``, ``limit`` and, with ``after``, ``after`` (an
    event time: the keyset of a single device's series is its time).
    """
    keyset = sql.SQL(" and ts > %(after)s") if after else sql.SQL("")
    if src.wide:
        col = sql.Identifier(src.metric)
        return sql.SQL(
            "select ts, rx, {c}, flags ->> {m} from {t} where device_code = %(d)s and {c} is not null"
            " and ts >= %(lo)s and ts < %(hi)s{k} order by ts limit %(limit)s"
        ).format(c=col, m=sql.Literal(src.metric), t=sql.Identifier(class_table(src.device_class)), k=keyset)
    return sql.SQL(
        "select ts, rx, value, (array['good', 'suspect', 'bad'])[quality + 1] from {t}"
        " where device_code = %(d)s and metric = {m} and ts >= %(lo)s and ts < %(hi)s{k}"
        " order by ts limit %(limit)s"
    ).format(t=sql.Identifier(EXTRA_TABLE), m=sql.Literal(src.metric), k=keyset)


#: The condition that keeps clock-skewed rows out of "latest" (params ``now``, ``skew``):
#: the same test as :func:`streams.pipeline.clock_skewed`, which keeps them from the rules.
SKEW_FILTER = "ts <= least(rx, %(now)s) + %(skew)s"


def latest_sql(device_class: str, metrics: Sequence[str], *, district: bool, after: bool) -> sql.Composed:
    """Latest row per device of a class (optionally one district), devices in code order.

    Params ``cls``, ``since`` (look no further back), ``now`` and ``skew``,
    ``limit``, and ``district`` / ``after`` (the last device code of the
    previous page) when asked for. A row dated more than ``skew`` after the
    earlier of its receive time and ``now`` is a device clock running ahead
    (:data:`SKEW_FILTER`): it is never the latest. One index probe per device
    on (device_code, ts), pruned to partitions newer than ``since``.
    """
    cols = sql.SQL("").join(sql.SQL(", r.{}").format(sql.Identifier(m)) for m in metrics)
    where = [sql.SQL("d.device_class = %(cls)s")]
    if district:
        where.append(sql.SQL("d.district = %(district)s"))
    if after:
        where.append(sql.SQL("d.code > %(after)s"))
    return sql.SQL(
        "select d.code, d.district, l.* from devices d cross join lateral ("
        " select r.ts, r.rx, r.quality, r.flags{cols} from {t} r"
        " where r.device_code = d.code and r.ts >= %(since)s and r.ts <= least(r.rx, %(now)s) + %(skew)s"
        " order by r.ts desc limit 1) as l"
        " where {where} order by d.code limit %(limit)s"
    ).format(cols=cols, t=sql.Identifier(class_table(device_class)), where=sql.SQL(" and ").join(where))


def export_sql(
    device_class: str, metrics: Sequence[str], *, device: bool, district: bool, after: bool, limit: bool
) -> sql.Composed:
    """Raw rows of a class in [lo, hi), ordered by (ts, device), for pages and exports.

    Params ``lo``, ``hi`` and, when asked for, ``d`` (one device), ``district``,
    ``after_ts``/``after_d`` (keyset) and ``limit``.
    """
    cols = sql.SQL("").join(sql.SQL(", r.{}").format(sql.Identifier(m)) for m in metrics)
    join = (
        sql.SQL(" join devices d on d.code = r.device_code and d.district = %(district)s") if district else sql.SQL("")
    )
    where = [sql.SQL("r.ts >= %(lo)s and r.ts < %(hi)s")]
    if device:
        where.append(sql.SQL("r.device_code = %(d)s"))
    if after:
        where.append(sql.SQL("(r.ts, r.device_code) > (%(after_ts)s, %(after_d)s)"))
    return sql.SQL(
        "select r.device_code, r.ts, r.rx, r.quality, r.flags{cols} from {t} r{join}"
        " where {where} order by r.ts, r.device_code{lim}"
    ).format(
        cols=cols,
        t=sql.Identifier(class_table(device_class)),
        join=join,
        where=sql.SQL(" and ").join(where),
        lim=sql.SQL(" limit %(limit)s") if limit else sql.SQL(""),
    )


def district_stats_sql(src: MetricSource | None) -> sql.Composed:
    """Per district of a class: devices, devices reporting since ``since``, and a metric's mean.

    "Reporting" is by receive time (``device_liveness.last_seen``); the mean
    is over good and suspect values with event time since ``since``.
    Params ``cls``, ``since``.
    """
    base = sql.SQL(
        "with d as (select code, district from devices where device_class = %(cls)s"
        " and state <> 'decommissioned'),"
        " live as (select d.district, count(*) as devices,"
        " count(*) filter (where l.last_seen >= %(since)s) as reporting"
        " from d left join device_liveness l on l.code = d.code group by d.district)"
    )
    if src is None:
        return sql.SQL(
            "{} select district, devices, reporting, null::float8, 0::bigint from live order by district"
        ).format(base)
    return sql.SQL(
        "{base}, m as (select d.district, avg(s.v) as mean, count(s.v) as n from ({vals}) s"
        " join d on d.code = s.device_code group by d.district)"
        " select live.district, live.devices, live.reporting, m.mean, coalesce(m.n, 0)"
        " from live left join m using (district) order by live.district"
    ).format(base=base, vals=_recent_values(src))


def _recent_values(src: MetricSource) -> sql.Composed:
    if src.wide:
        return sql.SQL("select device_code, {v} as v from {t} where ts >= %(since)s").format(
            v=metric_value_expr(src.metric), t=sql.Identifier(class_table(src.device_class))
        )
    return sql.SQL(
        "select device_code, case when quality >= 2 then null else value end as v from {t}"
        " where metric = {m} and ts >= %(since)s"
    ).format(t=sql.Identifier(EXTRA_TABLE), m=sql.Literal(src.metric))


def class_stats_sql(sources: Sequence[MetricSource]) -> sql.Composed:
    """Per class: devices, devices reporting since ``since``, and the mean of a metric where the class has it.

    Params ``since``.
    """
    means = [
        sql.SQL("select {c}::text as device_class, avg(v) as mean, count(v) as n from ({vals}) s").format(
            c=sql.Literal(s.device_class), vals=_recent_values(s)
        )
        for s in sources
    ]
    m = (
        sql.SQL(" union all ").join(means)
        if means
        else sql.SQL("select null::text, null::float8, 0::bigint where false")
    )
    return sql.SQL(
        "with live as (select d.device_class, count(*) as devices,"
        " count(*) filter (where l.last_seen >= %(since)s) as reporting"
        " from devices d left join device_liveness l on l.code = d.code"
        " where d.state <> 'decommissioned' group by d.device_class),"
        " m (device_class, mean, n) as ({m})"
        " select live.device_class, live.devices, live.reporting, m.mean, coalesce(m.n, 0)"
        " from live left join m using (device_class) order by live.device_class"
    ).format(m=m)


# --- executors ---------------------------------------------------------------


async def fetch_buckets(
    conn: psycopg.AsyncConnection, src: MetricSource, plan: BucketPlan, device: str, lo: datetime, hi: datetime
) -> list[Bucket]:
    """Run :func:`bucketed_sql` for one device."""
    cur = await conn.execute(bucketed_sql(src, plan), {"d": device, "lo": lo, "hi": hi})
    return [Bucket(r[0], r[1], r[2], r[3], int(r[4])) for r in await cur.fetchall()]


async def export_rows(
    conn: psycopg.AsyncConnection,
    device_class: str,
    metrics: Sequence[str],
    params: dict[str, Any],
    *,
    device: bool,
    district: bool,
    chunk: int = 5000,
) -> AsyncIterator[dict[str, Any]]:
    """Stream a class's raw rows in [lo, hi) through a server-side cursor.

    Memory stays bounded by ``chunk`` rows however long the range. ``conn``
    must not be in a transaction the caller needs: the cursor runs in its own.
    """
    query = export_sql(device_class, metrics, device=device, district=district, after=False, limit=False)
    async with conn.transaction():
        cur = conn.cursor("citybrain_export", row_factory=dict_row)
        try:
            await cur.execute(query, params)
            while True:
                rows = await cur.fetchmany(chunk)
                if not rows:
                    break
                for row in rows:
                    yield row
        finally:
            await cur.close()


class CatalogCache:
    """A :class:`Catalog` reloaded at most every ``ttl_s`` (so ``db upgrade`` shows up without a restart)."""

    def __init__(
        self, models: ModelRegistry, ttl_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.models = models
        self.ttl_s = ttl_s
        self._clock = clock
        self._catalog: Catalog | None = None
        self._loaded = 0.0

    async def get(self, pool: AsyncConnectionPool) -> Catalog:
        """The cached catalog, reloading it through ``pool`` when stale."""
        now = self._clock()
        if self._catalog is None or now - self._loaded > self.ttl_s:
            async with pool.connection() as conn:
                self._catalog = await Catalog.load(conn, self.models)
            self._loaded = now
        return self._catalog
