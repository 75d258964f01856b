"""Versioned database migrations (``citybrain db upgrade``, also run at demo start).

Each migration runs once, in order, inside a transaction, and is recorded in
``schema_migrations``. Readings tables are derived from the device models
(one wide table per device class); :func:`upgrade` brings them in line with
the loaded models after the numbered migrations, adding columns a new model
version declares. Never edit a released migration: add a new one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import resources

import psycopg
from psycopg import sql

from core.tables import class_table
from devices.models import ModelRegistry
from streams import rollup, timescale

__all__ = ["MIGRATIONS", "upgrade"]

log = logging.getLogger(__name__)

Migration = Callable[[psycopg.Connection], None]
#: Reads TimescaleDB's availability on a server (:func:`streams.timescale.probe_apart`).
TimescaleDetect = Callable[[psycopg.Connection], timescale.Capability]


def _sql_migrations() -> list[tuple[int, str, str]]:
    """SQL migrations shipped in ``citybrain/sql/NNNN_name.sql``, in version order.

    Version ranges per package keep parallel work from colliding: 0001–0099
    core, 0100s devices, 0200s ingest, 0300s streams, 0400s alerts, 0500s geo,
    0600s security.
    """
    out = []
    for entry in resources.files("citybrain").joinpath("sql").iterdir():
        m = re.match(r"^(\d{4})_([a-z0-9_]+)\.sql$", entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in citybrain/sql: {versions}")
    return out


def _run_sql(text: str) -> Migration:
    def run(conn: psycopg.Connection) -> None:
        conn.execute(text.encode())

    return run


MIGRATIONS: list[tuple[int, str, Migration]] = [(v, n, _run_sql(t)) for v, n, t in _sql_migrations()]


def ensure_class_tables(
    conn: psycopg.Connection, models: ModelRegistry, *, timescale_detect: TimescaleDetect | None = None
) -> None:
    """Create or extend one wide, day-partitioned table per device class, and its rollups.

    Columns: device_code, ts (event time, UTC), rx (receive time), one double
    precision column per metric of every model version of the class, the
    row's worst quality (0 good, 1 suspect, 2 bad), and ``flags`` with the
    per-metric quality and HJ 212 flags of non-good values.

    With TimescaleDB usable (:func:`streams.timescale.enable`), a new class
    table is a hypertable with 1-day chunks and its rollups are continuous
    aggregates; otherwise it is natively partitioned by day and its rollups
    are plain tables kept by :mod:`streams.rollup`. A table that already
    exists keeps its kind.

    ``timescale_detect`` reads whether the extension is available and
    preloaded (default :func:`streams.timescale.probe_apart`); tests pass
    their own to simulate a server.
    """
    use_timescale = timescale.enable(conn, timescale_detect or timescale.probe_apart)
    for device_class in models.device_classes():
        name = class_table(device_class)
        table = sql.Identifier(name)
        row = conn.execute("select relkind from pg_class where oid = to_regclass(%s)", (name,)).fetchone()
        if row is None:
            if use_timescale:
                conn.execute(
                    sql.SQL(
                        "create table {} ("
                        " device_code text not null, ts timestamptz not null, rx timestamptz not null,"
                        " quality smallint not null default 0, flags jsonb,"
                        " primary key (device_code, ts))"
                    ).format(table)
                )
                conn.execute(timescale.hypertable_sql(name))
            else:
                conn.execute(
                    sql.SQL(
                        "create table {} ("
                        " device_code text not null, ts timestamptz not null, rx timestamptz not null,"
                        " quality smallint not null default 0, flags jsonb,"
                        " primary key (device_code, ts)) partition by range (ts)"
                    ).format(table)
                )
        metrics = models.metrics_of_class(device_class)
        for metric in metrics:
            conn.execute(
                sql.SQL("alter table {} add column if not exists {} double precision").format(
                    table, sql.Identifier(metric)
                )
            )
        conn.execute(
            sql.SQL("create index if not exists {} on {} using brin (ts)").format(
                sql.Identifier(f"{name}_ts_brin"), table
            )
        )
        rollup_kind = conn.execute(
            "select relkind from pg_class where oid = to_regclass(%s)", (rollup.rollup_table(device_class, "5m"),)
        ).fetchone()
        hyper = (row is None and use_timescale) or (row is not None and row[0] == "r" and use_timescale)
        if hyper and (rollup_kind is None or rollup_kind[0] == "v"):
            # Continuous aggregates are fixed at creation: a metric added later is
            # answered from the raw table until they are recreated (docs/store.md).
            timescale.ensure_class(conn, device_class, metrics)
        else:
            for stmt in rollup.create_rollup_tables_sql(device_class, metrics):
                conn.execute(stmt)


def upgrade(
    conn: psycopg.Connection, models: ModelRegistry, *, timescale_detect: TimescaleDetect | None = None
) -> list[int]:
    """Apply pending migrations and align class tables; returns the versions applied.

    ``timescale_detect``: see :func:`ensure_class_tables`.
    """
    conn.execute(
        "create table if not exists schema_migrations ("
        " version integer primary key, name text not null, applied_at timestamptz not null default now())"
    )
    conn.commit()
    applied: list[int] = []
    with conn.transaction():
        # One upgrader at a time, even with several processes starting at once.
        conn.execute("select pg_advisory_xact_lock(727274)")
        done = {r[0] for r in conn.execute("select version from schema_migrations").fetchall()}
        for version, name, run in MIGRATIONS:
            if version in done:
                continue
            log.info("applying migration %04d: %s", version, name)
            run(conn)
            conn.execute("insert into schema_migrations (version, name) values (%s, %s)", (version, name))
            applied.append(version)
        ensure_class_tables(conn, models, timescale_detect=timescale_detect)
    return applied
