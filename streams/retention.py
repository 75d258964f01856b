"""Retention, partitions ahead of time, and the periodic maintenance entry point.

:func:`maintenance` is what a timer in the worker and ``citybrain db maintain``
call. In order, for each device class:

1. create the day partitions of the next ``ahead_days`` days, so the first
   flush after midnight does not pay for DDL (and never races another worker);
2. refresh the rollups the store marked dirty (5 min, then 1 h, then 1 day),
   ignoring marks older than the retention cutoff;
3. drop whole day partitions older than ``retention_days``, and delete the
   same range from ``readings_extra`` (a plain table, so a ranged delete).

Rollup tables are kept: they are what answers long ranges once the raw rows
are gone. On a TimescaleDB hypertable, steps 1 and 3 are the extension's
chunking and retention policy, which this function keeps in line with
``retention_days``; step 2 refreshes the continuous aggregates over the marked
buckets (late data older than their policies' windows).

Dropping a partition takes a short ACCESS EXCLUSIVE lock on the parent; at
the volumes planned (one partition per class per day) that is milliseconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from citybrain.migrations import class_table
from devices.models import ModelRegistry
from streams import rollup, timescale
from streams.errors import MaintenanceError
from streams.store import EXTRA_TABLE, ensure_partition, load_layout

__all__ = [
    "MaintenanceReport",
    "days_ahead",
    "drop_old_partitions",
    "list_partitions",
    "maintenance",
    "partitions_to_drop",
    "retention_cutoff",
]

log = logging.getLogger(__name__)

_LOCK_KEY = 727_275  # pg advisory lock of the maintenance job (727274 is the migrations')
_PART_RE = re.compile(r"^(?P<table>readings_[a-z0-9_]+)_(?P<day>\d{8})$")


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one maintenance run did (for logs and the CLI)."""

    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    extra_deleted: int = 0
    refreshed: tuple[rollup.RefreshResult, ...] = ()
    timescale: tuple[str, ...] = field(default=())
    skipped: bool = False

    def summary(self) -> str:
        if self.skipped:
            return "skipped: another process holds the maintenance lock"
        buckets = sum(r.buckets for r in self.refreshed)
        return (
            f"partitions created {len(self.created)}, dropped {len(self.dropped)}; "
            f"rollup buckets refreshed {buckets}; readings_extra rows deleted {self.extra_deleted}"
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


async def maintenance(
    conn: psycopg.AsyncConnection,
    models: ModelRegistry,
    now: datetime,
    retention_days: int,
    *,
    ahead_days: int = 7,
    compress_after_days: int | None = 7,
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

    Raises:
        MaintenanceError: a step failed (earlier steps stay done).
    """
    if now.tzinfo is None:
        raise MaintenanceError("now must be timezone-aware")
    cutoff = retention_cutoff(now, retention_days)
    keep_from = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC)
    classes = models.device_classes()
    created: list[str] = []
    dropped: list[str] = []
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
                await _timescale_class(conn, device_class, now, retention_days, compress_after_days, keep_from)
                continue
            for day in days_ahead(now, ahead_days):
                if await ensure_partition(conn, device_class, day):
                    created.append(f"{class_table(device_class)}_{day:%Y%m%d}")
            refreshed += await _refresh_plain(conn, device_class, layout.wide, keep_from, now)
            dropped += await drop_old_partitions(conn, device_class, cutoff)
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
    report = MaintenanceReport(tuple(created), tuple(dropped), extra_deleted, tuple(refreshed), tuple(ts_classes))
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
    if kind is None or kind[0] != "r":
        raise MaintenanceError(f"rollup tables of {device_class} are missing; run `citybrain db upgrade`")
    # Rollup columns follow the wide columns; the store writes the others narrow.
    cols = await _rollup_metrics(conn, device_class, metrics)
    return [
        await rollup.refresh_dirty(conn, device_class, cols, res.name, keep_from=keep_from, now=now)
        for res in rollup.RESOLUTIONS
    ]


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
) -> None:
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
        n = await timescale.refresh_marked(conn, device_class, keep_from=keep_from)
        log.debug("timescale %s: refreshed %d range(s) per level at %s", device_class, n, now)
    finally:
        await conn.set_autocommit(previous)
