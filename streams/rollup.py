"""Rollups on plain PostgreSQL: 5-minute, 1-hour and 1-day aggregates per class.

One wide table per class and resolution, ``rollup_{class}_{res}``, keyed by
(device_code, bucket), with four columns per metric: ``{m}_avg``, ``{m}_min``,
``{m}_max`` and ``{m}_count``. ``bad`` values (per metric, from the row's
``flags``) are left out; ``good`` and ``suspect`` are counted, because suspect
means "outside the physical range or clock skew", which an analyst still wants
to see in a trend, while bad is a value the device itself marked invalid.

On TimescaleDB the same names are continuous aggregates with the same columns
(:mod:`streams.timescale`), so :mod:`streams.queries` reads both alike.

Refresh is driven by dirty marks, not by a receive-time watermark: the store
appends the 5-minute buckets each flush touched to ``rollup_dirty`` in the
same transaction as the rows. A receive-time watermark would miss rows that
were received long ago but committed late (a worker catching up on Kafka lag),
and it cannot see which old buckets a late row fell into. Refreshing a level
consumes its marks, recomputes those buckets (delete + insert, so a refresh is
idempotent and a re-run changes nothing) and marks the parent buckets of the
next level: 5 min from raw rows, 1 h from 5 min, 1 day from 1 h. Each run is
recorded in ``rollup_watermark`` (last refresh time, buckets, latest bucket end).

Buckets are aligned on UTC midnight (``date_bin`` origin 2000-01-01 00:00 UTC,
which ``time_bucket`` uses too for these widths).

Like the raw tables, the plain rollup tables are natively partitioned on
``bucket`` (migration 0301 converted tables created before): by UTC month for
5 min and 1 h, by UTC year for 1 day, named ``rollup_{class}_{res}_YYYYMM`` /
``_YYYY``. Maintenance creates the current and next period's partitions ahead;
a recompute creates any other partition it needs (late data for an old month),
and retention (:mod:`streams.retention`) drops whole partitions per level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from streams.errors import MaintenanceError

__all__ = [
    "BUCKET_ORIGIN",
    "RESOLUTIONS",
    "RefreshResult",
    "Resolution",
    "aggregate_from_raw_sql",
    "bucket_expr",
    "create_partition_sql",
    "create_rollup_tables_sql",
    "ensure_rollup_partitions",
    "merge_ranges",
    "metric_value_expr",
    "partition_bounds",
    "partition_name",
    "partitions_covering",
    "refresh_dirty",
    "refresh_window",
    "resolution",
    "rollup_columns",
    "rollup_table",
]

log = logging.getLogger(__name__)

BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Resolution:
    """One rollup level.

    Attributes:
        name: Suffix of the table name (``5m``, ``1h``, ``1d``).
        width: Bucket width.
        pg_interval: The width as PostgreSQL interval text.
        source: The level it is computed from (None: the raw rows).
        partition: Span of one partition of its table, ``month`` or ``year`` (UTC).
    """

    name: str
    width: timedelta
    pg_interval: str
    source: str | None
    partition: str = "month"

    def floor(self, t: datetime) -> datetime:
        """Start of the bucket ``t`` falls in."""
        n = (t - BUCKET_ORIGIN) // self.width
        return BUCKET_ORIGIN + n * self.width


RESOLUTIONS: tuple[Resolution, ...] = (
    Resolution("5m", timedelta(minutes=5), "5 minutes", None),
    Resolution("1h", timedelta(hours=1), "1 hour", "5m"),
    # A day bucket per device is one row: a month would make tiny partitions.
    Resolution("1d", timedelta(days=1), "1 day", "1h", "year"),
)
_BY_NAME = {r.name: r for r in RESOLUTIONS}


def resolution(name: str) -> Resolution:
    """A rollup level by name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise MaintenanceError(f"unknown rollup resolution {name!r}") from None


def _parent(res: Resolution) -> Resolution | None:
    for r in RESOLUTIONS:
        if r.source == res.name:
            return r
    return None


def rollup_table(device_class: str, res: str) -> str:
    """Name of a class's rollup table (or continuous aggregate) at one resolution."""
    return f"rollup_{device_class}_{res}"


def rollup_columns(metric: str) -> tuple[str, str, str, str]:
    """The four rollup columns of a metric: avg, min, max, count."""
    return (f"{metric}_avg", f"{metric}_min", f"{metric}_max", f"{metric}_count")


def partition_bounds(res: Resolution, t: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` of the partition of ``res``'s table that holds bucket ``t`` (UTC month or year)."""
    u = t.astimezone(UTC)
    if res.partition == "year":
        return datetime(u.year, 1, 1, tzinfo=UTC), datetime(u.year + 1, 1, 1, tzinfo=UTC)
    start = datetime(u.year, u.month, 1, tzinfo=UTC)
    end = datetime(u.year + (u.month == 12), u.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def partition_name(device_class: str, res: Resolution, start: datetime | date) -> str:
    """``rollup_air_5m_202611`` (monthly) or ``rollup_air_1d_2026`` (yearly)."""
    suffix = f"{start:%Y}" if res.partition == "year" else f"{start:%Y%m}"
    return f"{rollup_table(device_class, res.name)}_{suffix}"


def partitions_covering(res: Resolution, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
    """The partitions ``[start, end)`` that buckets in ``[lo, hi)`` fall in, oldest first."""
    out: list[tuple[datetime, datetime]] = []
    t = lo
    while t < hi:
        start, end = partition_bounds(res, t)
        out.append((start, end))
        t = end
    return out


def create_partition_sql(device_class: str, res: Resolution, start: datetime, end: datetime) -> sql.Composed:
    """DDL of one rollup partition (idempotent)."""
    return sql.SQL("create table if not exists {} partition of {} for values from ({}) to ({})").format(
        sql.Identifier(partition_name(device_class, res, start)),
        sql.Identifier(rollup_table(device_class, res.name)),
        sql.Literal(start),
        sql.Literal(end),
    )


async def ensure_rollup_partitions(
    conn: psycopg.AsyncConnection, device_class: str, res: Resolution, ranges: Iterable[tuple[datetime, datetime]]
) -> list[str]:
    """Create the partitions of a rollup table that buckets in ``ranges`` (``[lo, hi)``) need and that are missing.

    Runs in the caller's transaction, if any. Creating a partition locks the
    parent table exclusively until commit, so it is done only when one is
    missing: maintenance creates the current and next period ahead, which
    leaves this to late data for an older period. A table that is not
    partitioned (a continuous aggregate, or a database still before migration
    0301) is left alone.

    Returns:
        The names of the partitions created.
    """
    wanted = {
        partition_name(device_class, res, a): (a, b) for lo, hi in ranges for a, b in partitions_covering(res, lo, hi)
    }
    if not wanted:
        return []
    parent = rollup_table(device_class, res.name)
    row = await (await conn.execute("select relkind from pg_class where oid = to_regclass(%s)", (parent,))).fetchone()
    if row is None or row[0] != "p":
        return []
    cur = await conn.execute(
        "select relname from pg_class where relname = any(%s) and relnamespace = current_schema()::regnamespace",
        (list(wanted),),
    )
    have = {r[0] for r in await cur.fetchall()}
    created = []
    for name, (a, b) in wanted.items():
        if name not in have:
            await conn.execute(create_partition_sql(device_class, res, a, b))
            log.info("rollup: created partition %s", name)
            created.append(name)
    return created


def metric_value_expr(metric: str, alias: str | None = None) -> sql.Composed:
    """A raw metric column with values flagged ``bad`` turned into NULL."""
    col = sql.Identifier(alias, metric) if alias else sql.Identifier(metric)
    flags = sql.Identifier(alias, "flags") if alias else sql.Identifier("flags")
    return sql.SQL("case when starts_with({f} ->> {m}, 'bad') then null else {c} end").format(
        f=flags, m=sql.Literal(metric), c=col
    )


def bucket_expr(width: str, column: str = "ts", *, timescale: bool = False) -> sql.Composed:
    """``date_bin`` (plain PostgreSQL) or ``time_bucket`` (TimescaleDB) of a column."""
    interval = sql.SQL("interval {}").format(sql.Literal(width))
    if timescale:
        return sql.SQL("time_bucket({}, {})").format(interval, sql.Identifier(column))
    return sql.SQL("date_bin({}, {}, {})").format(interval, sql.Identifier(column), sql.Literal(BUCKET_ORIGIN))


def create_rollup_tables_sql(device_class: str, metrics: Sequence[str]) -> list[sql.Composed]:
    """DDL for the plain rollup tables of a class (idempotent; adds new metrics' columns)."""
    out: list[sql.Composed] = []
    for res in RESOLUTIONS:
        table = sql.Identifier(rollup_table(device_class, res.name))
        out.append(
            sql.SQL(
                "create table if not exists {} (device_code text not null, bucket timestamptz not null,"
                " primary key (device_code, bucket)) partition by range (bucket)"
            ).format(table)
        )
        for m in metrics:
            avg, mn, mx, cnt = rollup_columns(m)
            out.append(
                sql.SQL(
                    "alter table {t} add column if not exists {a} double precision,"
                    " add column if not exists {mn} double precision, add column if not exists {mx} double precision,"
                    " add column if not exists {c} bigint not null default 0"
                ).format(
                    t=table,
                    a=sql.Identifier(avg),
                    mn=sql.Identifier(mn),
                    mx=sql.Identifier(mx),
                    c=sql.Identifier(cnt),
                )
            )
        # Range scans over all devices (statistics, refresh deletes) go by bucket.
        out.append(
            sql.SQL("create index if not exists {} on {} (bucket)").format(
                sql.Identifier(f"{rollup_table(device_class, res.name)}_bucket"), table
            )
        )
    return out


def aggregate_from_raw_sql(
    device_class: str,
    metrics: Sequence[str],
    width: str,
    *,
    timescale: bool = False,
    windowed: bool = True,
) -> sql.Composed:
    """``select device_code, bucket, {m}_avg, … group by`` over a class's raw rows.

    With ``windowed`` the query takes ``%(lo)s`` / ``%(hi)s`` bounds on ``ts``.
    """
    parts: list[sql.Composable] = []
    for m in metrics:
        v = metric_value_expr(m)
        avg, mn, mx, cnt = (sql.Identifier(c) for c in rollup_columns(m))
        parts.append(
            sql.SQL("avg({v}) as {a}, min({v}) as {mn}, max({v}) as {mx}, count({v}) as {c}").format(
                v=v, a=avg, mn=mn, mx=mx, c=cnt
            )
        )
    where = sql.SQL(" where ts >= %(lo)s and ts < %(hi)s") if windowed else sql.SQL("")
    return sql.SQL("select device_code, {b} as bucket{sep}{aggs} from {t}{w} group by device_code, 2").format(
        b=bucket_expr(width, timescale=timescale),
        sep=sql.SQL(", ") if parts else sql.SQL(""),
        aggs=sql.SQL(", ").join(parts),
        t=sql.Identifier(f"readings_{device_class}"),
        w=where,
    )


def _aggregate_from_rollup_sql(device_class: str, metrics: Sequence[str], res: Resolution) -> sql.Composed:
    """Re-aggregate a finer rollup into ``res`` buckets (count-weighted mean)."""
    assert res.source is not None
    parts: list[sql.Composable] = []
    for m in metrics:
        avg, mn, mx, cnt = (sql.Identifier(c) for c in rollup_columns(m))
        parts.append(
            sql.SQL(
                "sum({a} * {c}) / nullif(sum({c}), 0) as {a}, min({mn}) as {mn}, max({mx}) as {mx},"
                " coalesce(sum({c}), 0)::bigint as {c}"
            ).format(a=avg, mn=mn, mx=mx, c=cnt)
        )
    return sql.SQL(
        "select device_code, {b} as bucket{sep}{aggs} from {src}"
        " where bucket >= %(lo)s and bucket < %(hi)s group by device_code, 2"
    ).format(
        b=bucket_expr(res.pg_interval, "bucket"),
        sep=sql.SQL(", ") if parts else sql.SQL(""),
        aggs=sql.SQL(", ").join(parts),
        src=sql.Identifier(rollup_table(device_class, res.source)),
    )


def merge_ranges(buckets: Iterable[datetime], width: timedelta) -> list[tuple[datetime, datetime]]:
    """Coalesce bucket starts into sorted, non-overlapping ``[lo, hi)`` runs.

    Adjacent buckets merge, so a steady stream of marks becomes one range and
    one ``delete`` + ``insert`` pair instead of one per bucket.
    """
    out: list[tuple[datetime, datetime]] = []
    for b in sorted(set(buckets)):
        if out and b <= out[-1][1]:
            lo, hi = out[-1]
            out[-1] = (lo, max(hi, b + width))
        else:
            out.append((b, b + width))
    return out


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What one refresh of one class and level did."""

    device_class: str
    resolution: str
    ranges: int
    buckets: int
    rows: int
    discarded: int = 0


async def _recompute(
    conn: psycopg.AsyncConnection,
    device_class: str,
    metrics: Sequence[str],
    res: Resolution,
    lo: datetime,
    hi: datetime,
) -> int:
    table = sql.Identifier(rollup_table(device_class, res.name))
    select = (
        aggregate_from_raw_sql(device_class, metrics, res.pg_interval)
        if res.source is None
        else _aggregate_from_rollup_sql(device_class, metrics, res)
    )
    cols = [sql.Identifier("device_code"), sql.Identifier("bucket")]
    cols += [sql.Identifier(c) for m in metrics for c in rollup_columns(m)]
    # Delete then insert: a bucket whose rows all turned bad since the last
    # refresh disappears instead of keeping stale numbers.
    await conn.execute(
        sql.SQL("delete from {} where bucket >= %(lo)s and bucket < %(hi)s").format(table), {"lo": lo, "hi": hi}
    )
    cur = await conn.execute(
        sql.SQL("insert into {} ({}) {}").format(table, sql.SQL(", ").join(cols), select), {"lo": lo, "hi": hi}
    )
    return cur.rowcount


async def refresh_window(
    conn: psycopg.AsyncConnection, device_class: str, metrics: Sequence[str], lo: datetime, hi: datetime
) -> list[RefreshResult]:
    """Recompute every level of one class over ``[lo, hi)`` (widened to whole buckets).

    Idempotent: running it twice leaves the same tables. Use it to backfill
    after a bulk import; the scheduled job uses :func:`refresh_dirty`. Runs in
    one transaction on ``conn``.
    """
    if lo >= hi:
        raise MaintenanceError(f"empty refresh window [{lo}, {hi})")
    out = []
    async with conn.transaction():
        for res in RESOLUTIONS:
            a = res.floor(lo)
            b = res.floor(hi - timedelta(microseconds=1)) + res.width
            await ensure_rollup_partitions(conn, device_class, res, [(a, b)])
            rows = await _recompute(conn, device_class, metrics, res, a, b)
            out.append(RefreshResult(device_class, res.name, 1, int((b - a) / res.width), rows))
    return out


async def refresh_dirty(
    conn: psycopg.AsyncConnection,
    device_class: str,
    metrics: Sequence[str],
    res_name: str,
    *,
    keep_from: datetime | None = None,
    now: datetime | None = None,
) -> RefreshResult:
    """Recompute the buckets of one level that were marked dirty, and mark their parents.

    Args:
        conn: A connection outside any transaction; the refresh runs in one.
        device_class: The class.
        metrics: The class's wide metrics (the rollup columns).
        res_name: ``5m``, ``1h`` or ``1d``.
        keep_from: Oldest time the source still holds (the retention cutoff):
            marks before it are dropped, because recomputing them from rows
            retention already removed would wipe the rollups that outlive them.
        now: Recorded in ``rollup_watermark`` (defaults to the server clock).
    """
    res = resolution(res_name)
    parent = _parent(res)
    async with conn.transaction():
        # Consume the marks first: this statement's snapshot precedes the
        # recompute's, so every row whose mark we take is visible below, and a
        # mark committed meanwhile stays for the next run.
        cur = await conn.execute(
            "delete from rollup_dirty where device_class = %s and resolution = %s returning bucket",
            (device_class, res.name),
        )
        marks = [r[0] for r in await cur.fetchall()]
        discarded = 0
        if keep_from is not None:
            kept = [b for b in marks if b >= keep_from]
            discarded = len(set(marks)) - len(set(kept))
            if discarded:
                log.warning(
                    "rollup %s %s: %d dirty bucket(s) older than retention (%s) ignored",
                    device_class,
                    res.name,
                    discarded,
                    keep_from,
                )
            marks = kept
        buckets = {res.floor(b) for b in marks}
        ranges = merge_ranges(buckets, res.width)
        rows = 0
        await ensure_rollup_partitions(conn, device_class, res, ranges)
        for lo, hi in ranges:
            rows += await _recompute(conn, device_class, metrics, res, lo, hi)
        if parent is not None and buckets:
            await conn.execute(
                "insert into rollup_dirty (device_class, resolution, bucket)"
                " select %s, %s, b from unnest(%s::timestamptz[]) as b",
                (device_class, parent.name, sorted({parent.floor(b) for b in buckets})),
            )
        await conn.execute(
            "insert into rollup_watermark (device_class, resolution, refreshed_at, buckets, refreshed_through)"
            " values (%s, %s, coalesce(%s, now()), %s, %s)"
            " on conflict (device_class, resolution) do update set refreshed_at = excluded.refreshed_at,"
            " buckets = rollup_watermark.buckets + excluded.buckets,"
            " refreshed_through = greatest(rollup_watermark.refreshed_through, excluded.refreshed_through)",
            (device_class, res.name, now, len(buckets), ranges[-1][1] if ranges else None),
        )
    if buckets:
        log.debug("rollup %s %s: %d bucket(s) in %d range(s)", device_class, res.name, len(buckets), len(ranges))
    return RefreshResult(device_class, res.name, len(ranges), len(buckets), rows, discarded)
