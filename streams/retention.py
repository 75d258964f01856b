"""Retention, partitions ahead of time, and the periodic maintenance entry point.

:func:`maintenance` is what a timer in the worker and ``citybrain db maintain``
call. In order, for each device class:

1. create the day partitions of the next ``ahead_days`` days, so the first
   flush after midnight does not pay for DDL (and never races another worker);
2. refresh the rollups the store marked dirty (5 min, then 1 h, then 1 day),
   ignoring marks older than the retention cutoff;
3. drop whole day partitions older than ``retention_days``, and delete the
   same range from ``readings_extra`` (a plain table, so a ranged delete);
4. drop whole rollup partitions (months for 5 min and 1 h, years for 1 day)
   older than each level's own retention (``rollup_retention_days``).

Rollups outlive the raw rows: they are what answers long ranges once the raw
rows are gone. A level's retention is therefore never shorter than the raw
retention, nor than the finer level's (a shorter setting is raised to that,
with a warning): the query planner reads the coarsest rollup that fits a
bucket, and a coarser level must not be gone where a finer one still answers.
It also means a rollup bucket is never recomputed from a source that
retention has already emptied. On a TimescaleDB hypertable, steps 1 and 3 are
the extension's chunking and retention policy, which this function keeps in
line with ``retention_days``; step 2 refreshes the continuous aggregates over
the marked buckets (late data older than their policies' windows); step 4 is
a retention policy on each continuous aggregate.

Dropping a partition takes a short ACCESS EXCLUSIVE lock on the parent; at
the volumes planned (one partition per class per day) that is milliseconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from core.tables import class_table
from devices.models import ModelRegistry
from streams import rollup, timescale
from streams.errors import MaintenanceError
from streams.store import EXTRA_TABLE, ensure_partition, load_layout

__all__ = [
    "DEFAULT_ROLLUP_RETENTION_DAYS",
    "MaintenanceReport",
    "days_ahead",
    "drop_old_partitions",
    "drop_old_rollup_partitions",
    "effective_rollup_retention",
    "list_partitions",
    "list_rollup_partitions",
    "maintenance",
    "partitions_to_drop",
    "retention_cutoff",
    "rollup_partitions_to_drop",
]

log = logging.getLogger(__name__)

_LOCK_KEY = 727_275  # pg advisory lock of the maintenance job (727274 is the migrations')
_PART_RE = re.compile(r"^(?P<table>readings_[a-z0-9_]+)_(?P<day>\d{8})$")
_ROLLUP_PART_RE = re.compile(r"^(?P<table>rollup_[a-z0-9_]+_(?:5m|1h|1d))_(?P<period>\d{6}|\d{4})$")

# Days each rollup level is kept (None: for ever). Five-minute rollups are the
# bulk (288 rows per device and day); daily ones cost nothing to keep.
DEFAULT_ROLLUP_RETENTION_DAYS: Mapping[str, int | None] = {"5m": 400, "1h": 3 * 366, "1d": None}


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one maintenance run did (for logs and the CLI)."""

    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    extra_deleted: int = 0
    refreshed: tuple[rollup.RefreshResult, ...] = ()
    timescale: tuple[str, ...] = field(default=())
    skipped: bool = False
    rollup_dropped: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.skipped:
            return "skipped: another process holds the maintenance lock"
        buckets = sum(r.buckets for r in self.refreshed)
        return (
            f"partitions created {len(self.created)}, dropped {len(self.dropped)}; "
            f"rollup buckets refreshed {buckets}, rollup partitions dropped {len(self.rollup_dropped)}; "
            f"readings_extra rows deleted {self.extra_deleted}"
            + (f"; TimescaleDB classes {', '.join(self.timescale)}" if self.timescale else "")
        )


def retention_cutoff(now: datetime, retention_days: int) -> date:
    """First UTC day that is kept: partitions of earlier days are dropped."""
    if retention_days < 1:
        raise MaintenanceError("retention_days must be >= 1")
    return now.astimezone(UTC).date() - timedelta(days=retention_days)


def days_ahead(now: datetime, ahead_days: int) -> list[date]:
    """Today (UTC) and the next ``ahead_days`` days."""
    today = now.astimezone(UTC).date()
    return [today + timedelta(days=i) for i in range(ahead_days + 1)]


def partitions_to_drop(partitions: Iterable[tuple[str, date]], cutoff: date) -> list[str]:
    """Names of day partitions that end on or before the cutoff day, oldest first."""
    return [name for name, day in sorted(partitions, key=lambda p: p[1]) if day < cutoff]


async def list_partitions(conn: psycopg.AsyncConnection, device_class: str) -> list[tuple[str, date]]:
    """(name, day) of a class table's day partitions (those named by the store)."""
    cur = await conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = to_regclass(%s)",
        (class_table(device_class),),
    )
    out = []
    for (name,) in await cur.fetchall():
        m = _PART_RE.match(name)
        if m and m.group("table") == class_table(device_class):
            out.append((name, datetime.strptime(m.group("day"), "%Y%m%d").date()))
    return sorted(out, key=lambda p: p[1])


async def drop_old_partitions(conn: psycopg.AsyncConnection, device_class: str, cutoff: date) -> list[str]:
    """Drop a class table's day partitions before ``cutoff``; each drop commits on its own."""
    dropped = []
    for name in partitions_to_drop(await list_partitions(conn, device_class), cutoff):
        await conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))
        await conn.commit()
        log.info("retention: dropped %s", name)
        dropped.append(name)
    return dropped


def effective_rollup_retention(
    retention_days: int, rollup_retention_days: Mapping[str, int | None]
) -> dict[str, int | None]:
    """Days each rollup level is kept: as set, but at least the raw and the finer level's retention.

    A level missing from the mapping, or set to None or 0, is kept for ever;
    so is every coarser level after it.
    """
    out: dict[str, int | None] = {}
    floor: int | None = retention_days
    for res in rollup.RESOLUTIONS:
        want = rollup_retention_days.get(res.name)
        if floor is None or not want:
            out[res.name] = floor = None
            continue
        if want < floor:
            log.warning(
                "rollup retention of %s (%d days) is shorter than the raw or finer level's (%d); using %d",
                res.name,
                want,
                floor,
                floor,
            )
        out[res.name] = floor = max(want, floor)
    return out


async def list_rollup_partitions(
    conn: psycopg.AsyncConnection, device_class: str, res: rollup.Resolution
) -> list[tuple[str, datetime, datetime]]:
    """(name, start, end) of a rollup table's partitions (those named by :mod:`streams.rollup`), oldest first."""
    parent = rollup.rollup_table(device_class, res.name)
    cur = await conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = to_regclass(%s)",
        (parent,),
    )
    out = []
    for (name,) in await cur.fetchall():
        m = _ROLLUP_PART_RE.match(name)
        if m is None or m.group("table") != parent:
            continue
        period = m.group("period")
        t = datetime(int(period[:4]), int(period[4:6] or 1), 1, tzinfo=UTC)
        start, end = rollup.partition_bounds(res, t)
        if rollup.partition_name(device_class, res, start) == name:  # a month suffix on a yearly level is not ours
            out.append((name, start, end))
    return sorted(out, key=lambda p: p[1])


def rollup_partitions_to_drop(partitions: Iterable[tuple[str, datetime, datetime]], keep_from: datetime) -> list[str]:
    """Names of rollup partitions that end on or before ``keep_from`` (wholly older), oldest first."""
    return [name for name, _start, end in sorted(partitions, key=lambda p: p[1]) if end <= keep_from]


async def drop_old_rollup_partitions(
    conn: psycopg.AsyncConnection, device_class: str, res: rollup.Resolution, keep_from: datetime
) -> list[str]:
    """Drop a rollup level's partitions wholly before ``keep_from``; each drop commits on its own."""
    dropped = []
    for name in rollup_partitions_to_drop(await list_rollup_partitions(conn, device_class, res), keep_from):
        await conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))
        await conn.commit()
        log.info("retention: dropped %s", name)
        dropped.append(name)
    await conn.commit()
    return dropped


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


async def maintenance(
    conn: psycopg.AsyncConnection,
    models: ModelRegistry,
    now: datetime,
    retention_days: int,
    *,
    ahead_days: int = 7,
    compress_after_days: int | None = 7,
    rollup_retention_days: Mapping[str, int | None] = DEFAULT_ROLLUP_RETENTION_DAYS,
) -> MaintenanceReport:
    """Partitions ahead, rollup refresh, retention; safe to run often and concurrently-safe per step.

    Args:
        conn: A connection outside a transaction (it is committed per step;
            TimescaleDB refreshes switch it to autocommit).
        models: The device models (the class tables and their metrics).
        now: The current time (aware); passed in so tests control the clock.
        retention_days: Raw readings older than this many whole UTC days go.
        ahead_days: Day partitions created ahead of today.
        compress_after_days: TimescaleDB only: compress chunks older than this.
        rollup_retention_days: Per rollup level (``5m``, ``1h``, ``1d``), whole UTC
            days its partitions are kept (None or 0: for ever); see
            :func:`effective_rollup_retention`.

    Raises:
        MaintenanceError: a step failed (earlier steps stay done).
    """
    if now.tzinfo is None:
        raise MaintenanceError("now must be timezone-aware")
    cutoff = retention_cutoff(now, retention_days)
    keep_from = _day_start(cutoff)
    rollup_days = effective_rollup_retention(retention_days, rollup_retention_days)
    rollup_keep = {
        name: None if days is None else _day_start(retention_cutoff(now, days)) for name, days in rollup_days.items()
    }
    classes = models.device_classes()
    created: list[str] = []
    dropped: list[str] = []
    rollup_dropped: list[str] = []
    refreshed: list[rollup.RefreshResult] = []
    ts_classes: list[str] = []
    # One maintainer at a time across all workers: two concurrent rollup
    # recomputes of the same bucket would collide on the rollup key.
    got = await (await conn.execute("select pg_try_advisory_lock(%s)", (_LOCK_KEY,))).fetchone()
    await conn.commit()
    if not got or not got[0]:
        log.info("maintenance: another process is running it; skipped")
        return MaintenanceReport(skipped=True)
    try:
        layouts = await load_layout(conn, classes)
        await conn.commit()
        for device_class in classes:
            layout = layouts.get(device_class)
            if layout is None:
                raise MaintenanceError(f"{class_table(device_class)} is missing; run `citybrain db upgrade`")
            if not layout.partitioned:
                ts_classes.append(device_class)
                refreshed += await _timescale_class(
                    conn, device_class, now, retention_days, compress_after_days, keep_from
                )
                await _timescale_rollup_retention(conn, device_class, rollup_days)
                continue
            for day in days_ahead(now, ahead_days):
                if await ensure_partition(conn, device_class, day):
                    created.append(f"{class_table(device_class)}_{day:%Y%m%d}")
            created += await _rollup_partitions_ahead(conn, device_class, now)
            refreshed += await _refresh_plain(conn, device_class, layout.wide, keep_from, now)
            dropped += await drop_old_partitions(conn, device_class, cutoff)
            for res in rollup.RESOLUTIONS:
                level_keep = rollup_keep[res.name]
                if level_keep is not None:
                    rollup_dropped += await drop_old_rollup_partitions(conn, device_class, res, level_keep)
        cur = await conn.execute(
            sql.SQL("delete from {} where ts < %s").format(sql.Identifier(EXTRA_TABLE)), (keep_from,)
        )
        extra_deleted = cur.rowcount
        await conn.commit()
    except psycopg.Error as exc:
        raise MaintenanceError(f"maintenance failed: {exc}") from exc
    finally:
        if not conn.closed:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            await conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
            await conn.commit()
    report = MaintenanceReport(
        tuple(created),
        tuple(dropped),
        extra_deleted,
        tuple(refreshed),
        tuple(ts_classes),
        rollup_dropped=tuple(rollup_dropped),
    )
    log.info("maintenance: %s", report.summary())
    return report


async def _refresh_plain(
    conn: psycopg.AsyncConnection, device_class: str, metrics: Sequence[str], keep_from: datetime, now: datetime
) -> list[rollup.RefreshResult]:
    kind = await (
        await conn.execute(
            "select relkind from pg_class where oid = to_regclass(%s)", (rollup.rollup_table(device_class, "5m"),)
        )
    ).fetchone()
    await conn.commit()
    if kind is None or kind[0] not in ("r", "p"):  # p: partitioned (0301), r: before it
        raise MaintenanceError(f"rollup tables of {device_class} are missing; run `citybrain db upgrade`")
    # Rollup columns follow the wide columns; the store writes the others narrow.
    cols = await _rollup_metrics(conn, device_class, metrics)
    return [
        await rollup.refresh_dirty(conn, device_class, cols, res.name, keep_from=keep_from, now=now)
        for res in rollup.RESOLUTIONS
    ]


async def _rollup_partitions_ahead(conn: psycopg.AsyncConnection, device_class: str, now: datetime) -> list[str]:
    """The current and the next period's partitions of each rollup level (each commits)."""
    created: list[str] = []
    for res in rollup.RESOLUTIONS:
        _start, end = rollup.partition_bounds(res, now)
        created += await rollup.ensure_rollup_partitions(conn, device_class, res, [(now, end + timedelta(days=1))])
        await conn.commit()
    return created


async def _rollup_metrics(conn: psycopg.AsyncConnection, device_class: str, metrics: Sequence[str]) -> list[str]:
    """Wide metrics that also have rollup columns at every level."""
    cur = await conn.execute(
        "select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped",
        (rollup.rollup_table(device_class, "1d"),),
    )
    have = {r[0] for r in await cur.fetchall()}
    await conn.commit()
    return [m for m in metrics if f"{m}_count" in have]


async def _timescale_class(
    conn: psycopg.AsyncConnection,
    device_class: str,
    now: datetime,
    retention_days: int,
    compress_after_days: int | None,
    keep_from: datetime,
) -> list[rollup.RefreshResult]:
    await timescale.ensure_policies(
        conn,
        class_table(device_class),
        retention=timedelta(days=retention_days),
        compress_after=timedelta(days=compress_after_days) if compress_after_days else None,
    )
    await conn.commit()
    previous = conn.autocommit
    await conn.set_autocommit(True)
    try:
        refreshed = await timescale.refresh_marked(conn, device_class, keep_from=keep_from)
        log.debug("timescale %s: refreshed %s at %s", device_class, refreshed, now)
    finally:
        await conn.set_autocommit(previous)
    return refreshed


async def _timescale_rollup_retention(
    conn: psycopg.AsyncConnection, device_class: str, rollup_days: Mapping[str, int | None]
) -> None:
    """A retention policy on each continuous aggregate, as long as its level's retention."""
    for res in rollup.RESOLUTIONS:
        days = rollup_days[res.name]
        retention = None if days is None else timedelta(days=days)
        await timescale.ensure_rollup_retention(conn, rollup.rollup_table(device_class, res.name), retention)
    await conn.commit()
