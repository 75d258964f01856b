"""The readings store: a sink with ``add()``/``flush()`` that writes with COPY.

Writes are idempotent on (device, event time) for the wide class tables and
on (device, metric, event time) for the narrow ``readings_extra`` table: rows
are COPYed into a per-connection temporary staging table, then
``insert … on conflict do update`` merges them, so a replayed batch stores
nothing twice and a late partial message fills in its columns.

Which metrics go where is read from the database, not from the models: a
metric with a column in ``readings_{class}`` is written there; a metric a
newer model declares before ``citybrain db upgrade`` added its column (or one
deliberately kept narrow) is written to ``readings_extra``. Nothing is lost
while the schema lags the models.

Each flush also appends the 5-minute buckets it touched to ``rollup_dirty``
in the same transaction as the data, so the rollup job (:mod:`streams.rollup`)
recomputes exactly those buckets, late data included. The marks are plain
appends (no unique key), so concurrent workers never wait on each other.

Day partitions are created on demand before a batch that needs them (and
ahead of time by :func:`streams.retention.maintenance`), so late data lands in
its own day's partition. On TimescaleDB the class tables are hypertables and
no partition is created here.

A row the database refuses for itself — no partition accepts it (its day's
partition was detached, or could not be created), or a check constraint — must
not hold up the rows around it: the failing transaction is split in halves
until the refused rows are alone, the others are written, and the refused ones
are set aside for the caller to dead-letter (:meth:`ReadingStore.take_unplaced`).
Any other error (the database down, a lock timeout) fails the flush and keeps
every row for a retry.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.tables import class_table
from devices.models import ModelRegistry
from streams.errors import StreamsError
from streams.normalise import Row

__all__ = [
    "EXTRA_TABLE",
    "ClassLayout",
    "ReadingStore",
    "StoreConfig",
    "StoreError",
    "StoreMetrics",
    "Unplaced",
    "dirty_buckets",
    "ensure_partition",
    "load_layout",
    "partition_name",
]

log = logging.getLogger(__name__)

EXTRA_TABLE = "readings_extra"
# Finest rollup resolution; dirty marks are kept at this grain.
DIRTY_GRAIN = timedelta(minutes=5)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_QRANK = {"good": 0, "suspect": 1, "bad": 2}
_WIDE_TYPES = ["text", "timestamptz", "timestamptz", "int2", "jsonb"]


class StoreError(StreamsError):
    """The store could not write; the caller must retry.

    Queued rows are kept. A flush is split into transactions of at most
    :attr:`StoreConfig.batch_rows` rows, so some may already be committed; the
    retry rewrites them, which the merge makes harmless.
    """


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Typed store settings.

    Attributes:
        batch_rows: Wide rows per COPY + merge transaction (bounds lock time
            and memory of one statement; a larger flush is split).
        mark_dirty: Append touched buckets to ``rollup_dirty`` (off only for
            benchmarks that measure the bare merge).
    """

    batch_rows: int = 10_000
    mark_dirty: bool = True

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")


class StoreMetrics:
    """The store's metrics, on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter("citybrain_store_rows_written_total", "Rows written", ["table"], registry=registry)
        self.values = Counter(
            "citybrain_store_values_written_total", "Metric values written", ["table"], registry=registry
        )
        self.flushes = Counter("citybrain_store_flushes_total", "Flushes", registry=registry)
        self.copy_seconds = Histogram(
            "citybrain_store_copy_seconds",
            "Time to COPY and merge one flush",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.flush_rows = Histogram(
            "citybrain_store_flush_rows",
            "Rows per flush",
            buckets=(1, 10, 100, 500, 1000, 5000, 10_000, 50_000, 100_000),
            registry=registry,
        )
        self.pending = Gauge("citybrain_store_pending_rows", "Rows queued, not yet flushed", registry=registry)
        self.last_flush = Gauge(
            "citybrain_store_last_flush_timestamp_seconds", "Unix time of the last successful flush", registry=registry
        )
        self.errors = Counter("citybrain_store_errors_total", "Failed flushes", registry=registry)


@dataclass(frozen=True, slots=True)
class Unplaced:
    """A row the database refused on its own (the rest of its flush was written).

    Attributes:
        device_class: The row's class.
        row: The row.
        reason: ``no_partition`` (no partition of the class table accepts its
            event time) or ``check_violation``.
        detail: The database's message.
    """

    device_class: str
    row: Row
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ClassLayout:
    """Where one device class's metrics live in the database.

    Attributes:
        device_class: The class.
        wide: Metrics with a column in ``readings_{class}``, in column order.
        partitioned: The class table is natively partitioned (False on a
            TimescaleDB hypertable, which makes its own chunks).
    """

    device_class: str
    wide: tuple[str, ...]
    partitioned: bool


async def load_layout(conn: psycopg.AsyncConnection, device_classes: Sequence[str]) -> dict[str, ClassLayout]:
    """Read the class tables' actual metric columns and partitioning from the catalog."""
    tables = [class_table(c) for c in device_classes]
    cur = await conn.execute(
        "select c.relname, c.relkind, a.attname from pg_class c"
        " join pg_namespace n on n.oid = c.relnamespace and n.nspname = current_schema()"
        " join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped"
        " where c.relname = any(%s) order by c.relname, a.attnum",
        (tables,),
    )
    found: dict[str, tuple[str, list[str]]] = {}
    for relname, relkind, attname in await cur.fetchall():
        kind, cols = found.setdefault(relname, (relkind, []))
        cols.append(attname)
    fixed = {"device_code", "ts", "rx", "quality", "flags"}
    out: dict[str, ClassLayout] = {}
    for c in device_classes:
        if class_table(c) not in found:
            continue
        kind, cols = found[class_table(c)]
        out[c] = ClassLayout(c, tuple(x for x in cols if x not in fixed), kind == "p")
    return out


def partition_name(device_class: str, day: date) -> str:
    """Name of a class table's day partition (``readings_air_20261129``)."""
    return f"{class_table(device_class)}_{day:%Y%m%d}"


def dirty_buckets(times: Iterable[datetime], grain: timedelta = DIRTY_GRAIN) -> list[datetime]:
    """Distinct rollup buckets (start times, UTC) the given event times fall in."""
    g = int(grain.total_seconds() * 1_000_000)
    out = set()
    for t in times:
        us = (t - _EPOCH) // timedelta(microseconds=1)
        out.add(_EPOCH + timedelta(microseconds=us - us % g))
    return sorted(out)


def _chunks(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _metric_quality(flag: str | None) -> int:
    if not flag:
        return 0
    return _QRANK.get(flag.split(":", 1)[0], 0)


class ReadingStore:
    """Batched, idempotent writer of wide rows (and narrow ones for unmapped metrics)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        models: ModelRegistry,
        metrics: StoreMetrics,
        config: StoreConfig | None = None,
    ) -> None:
        self.pool = pool
        self.models = models
        self.metrics = metrics
        self.config = config or StoreConfig()
        self._classes = self.models.device_classes()
        self._units: dict[str, dict[str, str]] = {}
        for m in reversed(self.models.all()):  # latest version's unit wins
            for name, metric in m.metrics.items():
                self._units.setdefault(m.device_class, {}).setdefault(name, metric.unit)
        self._layout: dict[str, ClassLayout] | None = None
        self._partitions: set[tuple[str, date]] = set()
        self._pending: dict[str, dict[tuple[str, datetime], Row]] = {}
        self._unplaced: list[Unplaced] = []
        # Staging tables already created on a pooled connection (temp tables live
        # as long as the session); weak keys, so a closed connection is forgotten.
        self._staged: weakref.WeakKeyDictionary[psycopg.AsyncConnection, set[str]] = weakref.WeakKeyDictionary()

    def add(self, device_class: str, rows: Iterable[Row]) -> None:
        """Queue rows; rows with the same key merge (later values win)."""
        if device_class not in self._classes:
            raise StoreError(f"no table for device class {device_class!r}")
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
        self.metrics.pending.set(self.pending())

    def pending(self) -> int:
        """Rows queued and not yet written."""
        return sum(len(b) for b in self._pending.values())

    def take_unplaced(self) -> list[Unplaced]:
        """Rows the database refused in the flushes since the last call (then forgotten here)."""
        out, self._unplaced = self._unplaced, []
        return out

    async def refresh_layout(self) -> None:
        """Re-read the class tables' columns (after ``citybrain db upgrade`` added some)."""
        async with self.pool.connection() as conn:
            self._layout = await load_layout(conn, self._classes)

    async def flush(self) -> int:
        """Write everything queued; returns wide rows written.

        Rows the database refuses one by one (see the module docstring) are not
        written and not counted; :meth:`take_unplaced` returns them.

        Raises:
            StoreError: the write failed; the queued rows are kept for a retry.
        """
        if not self._pending:
            return 0
        t0 = time.perf_counter()
        written = 0
        unplaced: list[Unplaced] = []
        try:
            async with self.pool.connection() as conn:
                if self._layout is None:
                    self._layout = await load_layout(conn, self._classes)
                    await conn.commit()
                for device_class, bucket in self._pending.items():
                    layout = self._layout.get(device_class)
                    if layout is None:
                        raise StoreError(
                            f"table {class_table(device_class)} does not exist; run `citybrain db upgrade`"
                        )
                    if layout.partitioned:
                        await self._ensure_partitions(conn, device_class, {r.event_time for r in bucket.values()})
                for device_class, bucket in self._pending.items():
                    rows = list(bucket.values())
                    for chunk in _chunks(rows, self.config.batch_rows):
                        written += await self._write_placed(conn, self._layout[device_class], chunk, unplaced)
        except psycopg.Error as exc:
            self.metrics.errors.inc()
            # A stale layout (a column added, a table recreated) or a partition
            # dropped by retention since it was cached heals on the retry.
            self._layout = None
            self._partitions.clear()
            raise StoreError(f"write failed: {exc}") from exc
        self._unplaced += unplaced
        self._pending.clear()
        self.metrics.pending.set(0)
        self.metrics.flushes.inc()
        self.metrics.flush_rows.observe(written)
        self.metrics.copy_seconds.observe(time.perf_counter() - t0)
        self.metrics.last_flush.set(time.time())
        return written

    async def _write_placed(
        self, conn: psycopg.AsyncConnection, layout: ClassLayout, rows: list[Row], unplaced: list[Unplaced]
    ) -> int:
        """Write rows in one transaction; if the database refuses a row, split until it is alone.

        Halving costs O(k log n) transactions for k refused rows among n, and
        nothing when none is refused.
        """
        try:
            async with conn.transaction():
                return await self._write_chunk(conn, layout, rows)
        except psycopg.errors.CheckViolation as exc:
            # The rollback also undid a staging table created in this transaction.
            self._staged.pop(conn, None)
            if len(rows) == 1:
                message = exc.diag.message_primary or str(exc)
                reason = "no_partition" if message.startswith("no partition") else "check_violation"
                unplaced.append(Unplaced(layout.device_class, rows[0], reason, message))
                self._partitions.discard((layout.device_class, rows[0].event_time.astimezone(UTC).date()))
                log.warning(
                    "store: %s row of device %s at %s refused (%s): %s",
                    layout.device_class,
                    rows[0].device_code,
                    rows[0].event_time.isoformat(),
                    reason,
                    message,
                )
                return 0
        except psycopg.Error:
            self._staged.pop(conn, None)
            raise
        # Halves in event-time order, so one day's refused rows stay together.
        ordered = sorted(rows, key=lambda r: r.event_time)
        mid = len(ordered) // 2
        return await self._write_placed(conn, layout, ordered[:mid], unplaced) + await self._write_placed(
            conn, layout, ordered[mid:], unplaced
        )

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection, device_class: str, times: set[datetime]) -> None:
        days = {t.astimezone(UTC).date() for t in times}
        missing = sorted(d for d in days if (device_class, d) not in self._partitions)
        for day in missing:
            try:
                await ensure_partition(conn, device_class, day)
            except (psycopg.ProgrammingError, psycopg.DataError) as exc:
                # This day's partition cannot be made (its range overlaps a partition
                # someone else made, …). Its rows then find one to land in, or are
                # refused one by one in the write; they never hold up the batch.
                await conn.rollback()
                log.warning("store: partition of %s for %s not created: %s", device_class, day, exc)
                continue
            self._partitions.add((device_class, day))

    async def _stage(self, conn: psycopg.AsyncConnection, stage: str, like: str) -> None:
        done = self._staged.setdefault(conn, set())
        if stage in done:
            return
        # `on commit delete rows`: the staging rows vanish with the transaction,
        # so a failed flush leaves nothing behind for the next one to merge.
        await conn.execute(
            sql.SQL("create temp table if not exists {} (like {} including defaults) on commit delete rows").format(
                sql.Identifier(stage), sql.Identifier(like)
            )
        )
        done.add(stage)

    async def _write_chunk(self, conn: psycopg.AsyncConnection, layout: ClassLayout, rows: list[Row]) -> int:
        device_class = layout.device_class
        table = class_table(device_class)
        wide = layout.wide
        wide_set = set(wide)
        extra = [
            (r, m, v) for r in rows for m, v in r.values.items() if m not in wide_set
        ]  # metrics the table has no column for yet
        stage = f"stage_{device_class}"
        await self._stage(conn, stage, table)
        cols = ["device_code", "ts", "rx", "quality", "flags", *wide]
        # Binary COPY: no text formatting of timestamps and floats on either side.
        copy_sql = sql.SQL("copy {} ({}) from stdin (format binary)").format(
            sql.Identifier(stage), sql.SQL(", ").join(map(sql.Identifier, cols))
        )
        values = 0
        async with conn.cursor() as cur:
            async with cur.copy(copy_sql) as copy:
                copy.set_types(_WIDE_TYPES + ["float8"] * len(wide))
                for r in rows:
                    vals = [r.values.get(c) for c in wide]
                    values += sum(v is not None for v in vals)
                    await copy.write_row(
                        (
                            r.device_code,
                            r.event_time,
                            r.received_at,
                            r.quality,
                            Jsonb(r.flags) if r.flags else None,
                            *vals,
                        )
                    )
            await cur.execute(_merge_sql(table, stage, wide))
            if extra:
                await self._write_extra(cur, device_class, extra)
            if self.config.mark_dirty:
                await cur.execute(
                    "insert into rollup_dirty (device_class, resolution, bucket)"
                    " select %s, '5m', b from unnest(%s::timestamptz[]) as b",
                    (device_class, dirty_buckets(r.event_time for r in rows)),
                )
        self.metrics.rows.labels(table).inc(len(rows))
        self.metrics.values.labels(table).inc(values)
        return len(rows)

    async def _write_extra(
        self, cur: psycopg.AsyncCursor, device_class: str, extra: list[tuple[Row, str, float]]
    ) -> None:
        await self._stage(cur.connection, "stage_extra", EXTRA_TABLE)
        units = self._units.get(device_class, {})
        copy_sql = sql.SQL(
            "copy {} (device_code, metric, ts, rx, value, unit, quality) from stdin (format binary)"
        ).format(sql.Identifier("stage_extra"))
        async with cur.copy(copy_sql) as copy:
            copy.set_types(["text", "text", "timestamptz", "timestamptz", "float8", "text", "int2"])
            for r, metric, value in extra:
                await copy.write_row(
                    (
                        r.device_code,
                        metric,
                        r.event_time,
                        r.received_at,
                        value,
                        units.get(metric, ""),
                        _metric_quality(r.flags.get(metric)),
                    )
                )
        await cur.execute(
            sql.SQL(
                "insert into {t} as t (device_code, metric, ts, rx, value, unit, quality)"
                " select device_code, metric, ts, rx, value, unit, quality from {s}"
                " on conflict (device_code, metric, ts) do update set value = excluded.value,"
                " unit = excluded.unit, quality = excluded.quality, rx = least(t.rx, excluded.rx)"
            ).format(t=sql.Identifier(EXTRA_TABLE), s=sql.Identifier("stage_extra"))
        )
        self.metrics.rows.labels(EXTRA_TABLE).inc(len(extra))
        self.metrics.values.labels(EXTRA_TABLE).inc(len(extra))


def _merge_sql(table: str, stage: str, columns: Sequence[str]) -> sql.Composed:
    """``insert … select … on conflict`` from the staging table into the class table.

    A value already stored survives a later message that lacks it (``coalesce``),
    so a device that splits one instant over several messages ends up with one
    complete row; the earliest receive time and the worst quality are kept.
    """
    cols = ["device_code", "ts", "rx", "quality", "flags", *columns]
    updates = [sql.SQL("{c} = coalesce(excluded.{c}, t.{c})").format(c=sql.Identifier(c)) for c in columns]
    return sql.SQL(
        "insert into {table} as t ({cols}) select {cols} from {stage}"
        " on conflict (device_code, ts) do update set rx = least(t.rx, excluded.rx),"
        " quality = greatest(t.quality, excluded.quality),"
        " flags = case when excluded.flags is null then t.flags"
        "  else coalesce(t.flags, '{{}}'::jsonb) || excluded.flags end{sep}{updates}"
    ).format(
        table=sql.Identifier(table),
        cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        stage=sql.Identifier(stage),
        sep=sql.SQL(", ") if updates else sql.SQL(""),
        updates=sql.SQL(", ").join(updates),
    )


async def ensure_partition(conn: psycopg.AsyncConnection, device_class: str, day: date) -> bool:
    """Create the day partition of a class table if it does not exist; True if created.

    Commits (or rolls back) on ``conn``: call it outside a data transaction.
    """
    table = class_table(device_class)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    try:
        cur = await conn.execute(
            "select 1 from pg_class where relname = %s and relnamespace = current_schema()::regnamespace",
            (partition_name(device_class, day),),
        )
        if await cur.fetchone():
            await conn.commit()
            return False
        await conn.execute(
            sql.SQL("create table if not exists {} partition of {} for values from ({}) to ({})").format(
                sql.Identifier(partition_name(device_class, day)),
                sql.Identifier(table),
                sql.Literal(start),
                sql.Literal(end),
            )
        )
        await conn.commit()
    except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
        # Two workers raced to create the same partition: the other one won.
        await conn.rollback()
        return False
    return True
