"""TimescaleDB: hypertables, compression, retention and continuous aggregates.

Used when the extension is available (``pg_available_extensions``) and
preloaded (``shared_preload_libraries``). Both are read before anything is
tried, on a connection of the probe's own: on a server where the package is
installed but not preloaded, ``create extension`` raises a FATAL error that
closes the connection, so trying and catching cannot fall back. The objects keep the
names and columns of the plain-PostgreSQL layout, so :mod:`streams.queries`
and the API do not care which one they run on:

* ``readings_{class}`` is a hypertable on ``ts`` with 1-day chunks instead of
  a natively partitioned table;
* ``rollup_{class}_{5m,1h,1d}`` are continuous aggregates (each over the raw
  hypertable, with the same ``{m}_avg/_min/_max/_count`` columns and the same
  bad-value exclusion) with refresh policies, instead of tables refreshed by
  :mod:`streams.rollup`;
* compression after N days (segment by device, order by time) and a retention
  policy replace :mod:`streams.retention`'s partition drops, on the raw
  hypertable and (per level) on each continuous aggregate.

Late data older than a refresh policy's window is still caught: the store's
dirty marks are turned into ``refresh_continuous_aggregate`` calls by
:func:`refresh_marked`.

A class table created before TimescaleDB was installed stays natively
partitioned (it cannot be converted in place); the maintenance job then uses
the plain path for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from streams.rollup import RESOLUTIONS, RefreshResult, aggregate_from_raw_sql, merge_ranges, rollup_table

__all__ = [
    "Capability",
    "aprobe",
    "compression_sql",
    "continuous_aggregate_sql",
    "enable",
    "ensure_class",
    "ensure_policies",
    "ensure_rollup_retention",
    "hypertable_sql",
    "probe",
    "probe_apart",
    "refresh_marked",
    "refresh_policy_sql",
    "remove_retention_policy_sql",
    "retention_policy_sql",
]

log = logging.getLogger(__name__)

# pg_available_extensions unqualified: a test shadows it with a view in an earlier schema.
_PROBE = (
    "select (select true from pg_available_extensions where name = 'timescaledb'),"
    " (select extversion from pg_extension where extname = 'timescaledb'),"
    " current_setting('shared_preload_libraries')"
)
# Refresh policy per level: (start_offset, end_offset, schedule_interval).
# The end offset keeps the still-filling bucket out of the materialisation.
_POLICY = {
    "5m": ("3 days", "5 minutes", "5 minutes"),
    "1h": ("7 days", "1 hour", "30 minutes"),
    "1d": ("30 days", "1 day", "6 hours"),
}


@dataclass(frozen=True, slots=True)
class Capability:
    """What the database offers.

    Attributes:
        available: The extension is installable (``pg_available_extensions``).
        version: The installed version, or None if not created in this database.
        preloaded: ``timescaledb`` is in the server's ``shared_preload_libraries``
            (without it, creating or using the extension is a FATAL error).
    """

    available: bool
    version: str | None
    preloaded: bool = False

    @property
    def installed(self) -> bool:
        return self.version is not None

    @property
    def usable(self) -> bool:
        """The extension can be created (or is) and used without killing the connection."""
        return self.available and self.preloaded


def _preloaded(setting: str | None) -> bool:
    # A comma-separated list; entries may be quoted or carry a directory ("$libdir/timescaledb").
    for item in (setting or "").split(","):
        lib = item.strip().strip('"').rsplit("/", 1)[-1]
        if lib == "timescaledb" or lib.startswith("timescaledb-"):
            return True
    return False


def _capability(row: tuple[object, ...] | None) -> Capability:
    if row is None:
        return Capability(False, None)
    return Capability(bool(row[0]), None if row[1] is None else str(row[1]), _preloaded(str(row[2] or "")))


def probe(conn: psycopg.Connection) -> Capability:
    """Probe a (synchronous) connection for TimescaleDB (reads only; never loads the extension)."""
    return _capability(conn.execute(_PROBE).fetchone())


async def aprobe(conn: psycopg.AsyncConnection) -> Capability:
    """Probe an async connection for TimescaleDB (reads only; never loads the extension)."""
    return _capability(await (await conn.execute(_PROBE)).fetchone())


def probe_apart(conn: psycopg.Connection) -> Capability:
    """Probe on a connection of its own to the same database, so nothing can touch ``conn``.

    Falls back to probing ``conn`` itself (the probe only reads) when a second
    connection cannot be opened (connection limit, a password only the first
    one knew).
    """
    # The live connection's own parameters (password included, which ``conn.info.dsn`` hides).
    params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val}
    try:
        with psycopg.connect(make_conninfo(**params), autocommit=True, connect_timeout=10) as own:
            return probe(own)
    except psycopg.OperationalError as exc:
        log.debug("TimescaleDB probe on its own connection failed (%s); probing the migration's", exc)
        return probe(conn)


def enable(conn: psycopg.Connection, detect: Callable[[psycopg.Connection], Capability] = probe_apart) -> bool:
    """Create the extension if it can be used; True when it is usable.

    Availability and preloading are read first (``detect``, by default
    :func:`probe_apart`), so ``create extension`` is only tried where it cannot
    raise the FATAL error that would close ``conn`` and roll back the whole
    upgrade. An available but not preloaded extension means the plain layout
    (native partitions), with a warning saying what to set.

    Args:
        conn: The migration's connection (in its transaction).
        detect: How the facts are read; tests pass their own to simulate a server.
    """
    cap = detect(conn)
    if cap.available and not cap.preloaded:
        log.warning(
            "TimescaleDB is installed%s but not in shared_preload_libraries; using native partitioning"
            " (add timescaledb to shared_preload_libraries and restart the server to use it)",
            f" (version {cap.version} in this database)" if cap.installed else "",
        )
        return False
    if cap.installed:
        return True
    if not cap.available:
        return False
    try:
        with conn.transaction():
            conn.execute("create extension if not exists timescaledb")
    except psycopg.Error as exc:
        log.warning("TimescaleDB is available but cannot be created (%s); using native partitioning", exc)
        return False
    log.info("TimescaleDB enabled")
    return True


def hypertable_sql(table: str) -> sql.Composed:
    """Turn a fresh table into a hypertable on ``ts`` with 1-day chunks."""
    return sql.SQL(
        "select create_hypertable({}, 'ts', chunk_time_interval => interval '1 day', if_not_exists => true)"
    ).format(sql.Literal(table))


def compression_sql(table: str, compress_after: timedelta) -> list[sql.Composed]:
    """Enable compression (by device, newest first) and a policy after ``compress_after``."""
    return [
        sql.SQL(
            "alter table {} set (timescaledb.compress, timescaledb.compress_segmentby = 'device_code',"
            " timescaledb.compress_orderby = 'ts desc')"
        ).format(sql.Identifier(table)),
        sql.SQL("select add_compression_policy({}, {}::interval, if_not_exists => true)").format(
            sql.Literal(table), sql.Literal(f"{int(compress_after.total_seconds())} seconds")
        ),
    ]


def continuous_aggregate_sql(device_class: str, metrics: Sequence[str], res: str) -> sql.Composed:
    """A continuous aggregate with the plain rollup table's name and columns."""
    width = next(r.pg_interval for r in RESOLUTIONS if r.name == res)
    return sql.SQL("create materialized view if not exists {} with (timescaledb.continuous) as {} with no data").format(
        sql.Identifier(rollup_table(device_class, res)),
        aggregate_from_raw_sql(device_class, metrics, width, timescale=True, windowed=False),
    )


def refresh_policy_sql(device_class: str, res: str) -> sql.Composed:
    """The refresh policy of one continuous aggregate."""
    start, end, every = _POLICY[res]
    return sql.SQL(
        "select add_continuous_aggregate_policy({}, start_offset => interval {}, end_offset => interval {},"
        " schedule_interval => interval {}, if_not_exists => true)"
    ).format(sql.Literal(rollup_table(device_class, res)), sql.Literal(start), sql.Literal(end), sql.Literal(every))


def ensure_class(conn: psycopg.Connection, device_class: str, metrics: Sequence[str]) -> None:
    """Hypertable settings and continuous aggregates of one class (idempotent).

    The class table must already exist as a hypertable.
    """
    for res in RESOLUTIONS:
        conn.execute(continuous_aggregate_sql(device_class, metrics, res.name))
        conn.execute(refresh_policy_sql(device_class, res.name))


async def ensure_policies(
    conn: psycopg.AsyncConnection,
    table: str,
    *,
    retention: timedelta | None,
    compress_after: timedelta | None,
) -> None:
    """Bring a hypertable's retention and compression policies in line with the settings."""
    if compress_after is not None:
        cur = await conn.execute(
            "select compression_enabled from timescaledb_information.hypertables where hypertable_name = %s",
            (table,),
        )
        row = await cur.fetchone()
        if row and not row[0]:
            for stmt in compression_sql(table, compress_after):
                await conn.execute(stmt)
    if retention is None:
        return
    want = f"{int(retention.total_seconds())} seconds"
    cur = await conn.execute(
        "select (config->>'drop_after')::interval = %s::interval from timescaledb_information.jobs"
        " where proc_name = 'policy_retention' and hypertable_name = %s",
        (want, table),
    )
    row = await cur.fetchone()
    if row is not None and row[0]:
        return
    if row is not None:
        await conn.execute("select remove_retention_policy(%s, if_exists => true)", (table,))
    await conn.execute("select add_retention_policy(%s, %s::interval, if_not_exists => true)", (table, want))


# The retention job of a continuous aggregate, found through its materialization hypertable.
_CAGG_RETENTION = (
    "select (j.config->>'drop_after')::interval = %s::interval"
    " from timescaledb_information.jobs j join timescaledb_information.continuous_aggregates c"
    " on c.materialization_hypertable_schema = j.hypertable_schema"
    " and c.materialization_hypertable_name = j.hypertable_name"
    " where j.proc_name = 'policy_retention' and c.view_name = %s"
)


def retention_policy_sql(relation: str, drop_after: timedelta) -> sql.Composed:
    """``add_retention_policy`` on a hypertable or a continuous aggregate."""
    return sql.SQL("select add_retention_policy({}, {}::interval, if_not_exists => true)").format(
        sql.Literal(relation), sql.Literal(f"{int(drop_after.total_seconds())} seconds")
    )


def remove_retention_policy_sql(relation: str) -> sql.Composed:
    """``remove_retention_policy``, a no-op where there is none."""
    return sql.SQL("select remove_retention_policy({}, if_exists => true)").format(sql.Literal(relation))


async def ensure_rollup_retention(conn: psycopg.AsyncConnection, view: str, retention: timedelta | None) -> None:
    """Keep a continuous aggregate's retention policy equal to ``retention`` (None: no policy).

    A policy whose ``drop_after`` differs is replaced. A name that is not a
    continuous aggregate (a plain rollup table) is left alone.
    """
    cur = await conn.execute(
        "select 1 from timescaledb_information.continuous_aggregates where view_name = %s", (view,)
    )
    if await cur.fetchone() is None:
        return
    want = f"{int(retention.total_seconds())} seconds" if retention is not None else "0 seconds"
    row = await (await conn.execute(_CAGG_RETENTION, (want, view))).fetchone()
    if retention is None:
        if row is not None:
            await conn.execute(remove_retention_policy_sql(view))
        return
    if row is not None and row[0]:
        return
    if row is not None:
        await conn.execute(remove_retention_policy_sql(view))
    await conn.execute(retention_policy_sql(view, retention))


async def refresh_marked(
    conn: psycopg.AsyncConnection, device_class: str, *, keep_from: datetime | None = None
) -> list[RefreshResult]:
    """Refresh the continuous aggregates over the buckets the store marked dirty.

    ``refresh_continuous_aggregate`` cannot run inside a transaction, so
    ``conn`` must be in autocommit mode. The marks are consumed first; if a
    refresh then fails, the policies still cover recent buckets and the error
    is raised for the caller to log.

    Returns:
        Per level, the ``[lo, hi)`` ranges and the buckets refreshed (as
        :func:`streams.rollup.refresh_dirty` reports them for plain rollups;
        ``rows`` is 0, the extension does not say), and the marks discarded as
        older than ``keep_from``.
    """
    cur = await conn.execute(
        "delete from rollup_dirty where device_class = %s returning resolution, bucket", (device_class,)
    )
    fine = [b for res, b in await cur.fetchall() if res == "5m"]
    marks = [b for b in fine if keep_from is None or b >= keep_from]
    out = []
    for res in RESOLUTIONS:
        buckets = {res.floor(b) for b in marks}
        spans = merge_ranges(buckets, res.width)
        for lo, hi in spans:
            await conn.execute(
                "call refresh_continuous_aggregate(%s, %s, %s)", (rollup_table(device_class, res.name), lo, hi)
            )
        discarded = len(fine) - len(marks) if res is RESOLUTIONS[0] else 0
        out.append(RefreshResult(device_class, res.name, len(spans), len(buckets), 0, discarded))
    return out
