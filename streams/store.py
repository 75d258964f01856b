"""The readings store: a sink with ``add()``/``flush()`` that writes with COPY.

Writes are idempotent on (device, event time) for the wide class tables and
on (device, metric, event time) for the narrow table: rows are COPYed into a
temporary staging table, then ``insert … on conflict do update`` merges them,
so a replayed batch stores nothing twice and a late partial message fills in
its columns. Day partitions are created on demand before a batch that needs
them, so late data lands in its own day's partition.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from citybrain.migrations import class_table
from devices.models import ModelRegistry
from streams.normalise import Row

__all__ = ["ReadingStore", "StoreError", "StoreMetrics"]

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The store could not write; the caller must retry (nothing was committed)."""


class StoreMetrics:
    """The store's metrics, on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter("citybrain_store_rows_written_total", "Rows written", ["table"], registry=registry)
        self.flushes = Counter("citybrain_store_flushes_total", "Flushes", registry=registry)
        self.copy_seconds = Histogram(
            "citybrain_store_copy_seconds",
            "Time to COPY and merge one flush",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.errors = Counter("citybrain_store_errors_total", "Failed flushes", registry=registry)


class ReadingStore:
    """Batched, idempotent writer of wide rows."""

    def __init__(self, pool: AsyncConnectionPool, models: ModelRegistry, metrics: StoreMetrics) -> None:
        self.pool = pool
        self.models = models
        self.metrics = metrics
        self._columns = {c: self.models.metrics_of_class(c) for c in self.models.device_classes()}
        self._partitions: set[tuple[str, date]] = set()
        self._pending: dict[str, dict[tuple[str, datetime], Row]] = {}

    def add(self, device_class: str, rows: Iterable[Row]) -> None:
        """Queue rows; rows with the same key merge (later values win)."""
        bucket = self._pending.setdefault(device_class, {})
        for row in rows:
            key = (row.device_code, row.event_time)
            cur = bucket.get(key)
            if cur is None:
                bucket[key] = Row(
                    row.device_code, row.event_time, row.received_at, dict(row.values), dict(row.flags), row.quality
                )
            else:
                cur.values.update(row.values)
                cur.flags.update(row.flags)
                cur.quality = max(cur.quality, row.quality)

    def pending(self) -> int:
        return sum(len(b) for b in self._pending.values())

    async def flush(self) -> int:
        """Write everything queued in one transaction; returns rows written.

        Raises:
            StoreError: nothing was committed; the queued rows are kept for a retry.
        """
        if not self._pending:
            return 0
        t0 = time.perf_counter()
        written = 0
        try:
            async with self.pool.connection() as conn:
                for device_class, bucket in self._pending.items():
                    await self._ensure_partitions(conn, device_class, {r.event_time for r in bucket.values()})
                async with conn.transaction():
                    for device_class, bucket in self._pending.items():
                        written += await self._write_class(conn, device_class, list(bucket.values()))
        except psycopg.Error as exc:
            self.metrics.errors.inc()
            raise StoreError(f"write failed: {exc}") from exc
        self._pending.clear()
        self.metrics.flushes.inc()
        self.metrics.copy_seconds.observe(time.perf_counter() - t0)
        return written

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection, device_class: str, times: set[datetime]) -> None:
        days = {t.date() for t in times}
        missing = sorted(d for d in days if (device_class, d) not in self._partitions)
        for day in missing:
            await ensure_partition(conn, device_class, day)
            self._partitions.add((device_class, day))

    async def _write_class(self, conn: psycopg.AsyncConnection, device_class: str, rows: list[Row]) -> int:
        columns = self._columns.get(device_class)
        if columns is None:
            raise StoreError(f"no table for device class {device_class!r}")
        table = class_table(device_class)
        stage = f"stage_{device_class}"
        cols = ["device_code", "ts", "rx", "quality", "flags", *columns]
        await conn.execute(
            sql.SQL("create temp table if not exists {} (like {} including defaults) on commit delete rows").format(
                sql.Identifier(stage), sql.Identifier(table)
            )
        )
        copy_sql = sql.SQL("copy {} ({}) from stdin").format(
            sql.Identifier(stage), sql.SQL(", ").join(map(sql.Identifier, cols))
        )
        async with conn.cursor() as cur:
            async with cur.copy(copy_sql) as copy:
                for r in rows:
                    await copy.write_row(
                        (
                            r.device_code,
                            r.event_time,
                            r.received_at,
                            r.quality,
                            json.dumps(r.flags) if r.flags else None,
                            *[r.values.get(c) for c in columns],
                        )
                    )
            updates = [sql.SQL("{c} = coalesce(excluded.{c}, t.{c})").format(c=sql.Identifier(c)) for c in columns]
            merge = sql.SQL(
                "insert into {table} as t ({cols}) select {cols} from {stage}"
                " on conflict (device_code, ts) do update set rx = least(t.rx, excluded.rx),"
                " quality = greatest(t.quality, excluded.quality),"
                " flags = case when excluded.flags is null then t.flags"
                "  else coalesce(t.flags, '{{}}'::jsonb) || excluded.flags end, {updates}"
            ).format(
                table=sql.Identifier(table),
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                stage=sql.Identifier(stage),
                updates=sql.SQL(", ").join(updates),
            )
            await cur.execute(merge)
        self.metrics.rows.labels(table).inc(len(rows))
        return len(rows)


async def ensure_partition(conn: psycopg.AsyncConnection, device_class: str, day: date) -> None:
    """Create the day partition of a class table if it does not exist."""
    table = class_table(device_class)
    part = f"{table}_{day:%Y%m%d}"
    start = datetime(day.year, day.month, day.day).isoformat() + "+00:00"
    end = (datetime(day.year, day.month, day.day) + timedelta(days=1)).isoformat() + "+00:00"
    try:
        await conn.execute(
            sql.SQL("create table if not exists {} partition of {} for values from ({}) to ({})").format(
                sql.Identifier(part), sql.Identifier(table), sql.Literal(start), sql.Literal(end)
            )
        )
        await conn.commit()
    except psycopg.errors.DuplicateTable:
        await conn.rollback()
    except psycopg.errors.UniqueViolation:
        # Two workers raced to create the same partition: the other one won.
        await conn.rollback()
