"""Versioned database migrations (``citybrain db upgrade``, also run at demo start).

Each migration runs once, in order, inside a transaction, and is recorded in
``schema_migrations``. Readings tables are derived from the device models
(one wide table per device class); :func:`upgrade` brings them in line with
the loaded models after the numbered migrations, adding columns a new model
version declares. Never edit a released migration: add a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from devices.models import ModelRegistry

__all__ = ["MIGRATIONS", "upgrade"]

log = logging.getLogger(__name__)

_0001 = """
create table if not exists devices (
    code            text primary key,
    alias           text unique,
    model           text not null,
    device_class    text not null,
    name            text not null default '',
    district        text not null,
    grid            text,
    lon             double precision,
    lat             double precision,
    crs             text not null default 'WGS84' check (crs in ('WGS84', 'GCJ02')),
    owner_unit      text,
    installer       text,
    contact         text,
    install_date    date,
    state           text not null default 'registered'
                    check (state in ('registered', 'active', 'suspended', 'decommissioned')),
    attributes      jsonb not null default '{}'::jsonb,
    secret_hash     text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    created_by      text not null default 'system',
    updated_by      text not null default 'system'
);
create index if not exists devices_district_class on devices (district, device_class);
create table if not exists device_state_history (
    code        text not null references devices(code),
    at          timestamptz not null default now(),
    from_state  text,
    to_state    text not null,
    reason      text not null default '',
    actor       text not null default 'system'
);
create index if not exists device_state_history_code on device_state_history (code, at);
create table if not exists device_liveness (
    code            text primary key,
    last_seen       timestamptz not null,
    last_event_time timestamptz not null
);
create table if not exists code_sequences (
    district    text not null,
    class_code  text not null,
    next_seq    integer not null,
    primary key (district, class_code)
);

-- Narrow table for metrics a model adds later than its class table.
create table if not exists readings_extra (
    device_code text not null,
    metric      text not null,
    ts          timestamptz not null,
    rx          timestamptz not null,
    value       double precision not null,
    unit        text not null,
    quality     smallint not null default 0,
    primary key (device_code, metric, ts)
);
create index if not exists readings_extra_ts on readings_extra using brin (ts);

create table if not exists alerts (
    id          text primary key,
    rule        text not null,
    device_code text not null,
    district    text not null,
    device_class text,
    severity    smallint not null,
    state       text not null check (state in ('open', 'acknowledged', 'resolved')),
    opened_at   timestamptz not null,
    cleared_at  timestamptz,
    metric      text,
    value       double precision,
    threshold   double precision,
    message     text not null default '',
    labels      jsonb not null default '{}'::jsonb,
    assignee    text,
    raised_at   timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create index if not exists alerts_open on alerts (state, severity, district);
create index if not exists alerts_opened_at on alerts (opened_at desc);
create index if not exists alerts_device on alerts (device_code, rule) where state <> 'resolved';
create table if not exists alert_history (
    alert_id    text not null references alerts(id),
    at          timestamptz not null default now(),
    action      text not null,
    actor       text not null default 'system',
    comment     text not null default ''
);
create index if not exists alert_history_alert on alert_history (alert_id, at);
"""

Migration = Callable[[psycopg.Connection], None]


def _sql(text: str) -> Migration:
    def run(conn: psycopg.Connection) -> None:
        conn.execute(text.encode())

    return run


MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "ledger, liveness, narrow readings, alerts", _sql(_0001)),
]


def class_table(device_class: str) -> str:
    """Name of a device class's wide readings table."""
    return f"readings_{device_class}"


def ensure_class_tables(conn: psycopg.Connection, models: ModelRegistry) -> None:
    """Create or extend one wide, day-partitioned table per device class.

    Columns: device_code, ts (event time, UTC), rx (receive time), one double
    precision column per metric of every model version of the class, the
    row's worst quality (0 good, 1 suspect, 2 bad), and ``flags`` with the
    per-metric quality and HJ 212 flags of non-good values.
    """
    for device_class in models.device_classes():
        table = sql.Identifier(class_table(device_class))
        conn.execute(
            sql.SQL(
                "create table if not exists {} ("
                " device_code text not null, ts timestamptz not null, rx timestamptz not null,"
                " quality smallint not null default 0, flags jsonb,"
                " primary key (device_code, ts)) partition by range (ts)"
            ).format(table)
        )
        for metric in models.metrics_of_class(device_class):
            conn.execute(
                sql.SQL("alter table {} add column if not exists {} double precision").format(
                    table, sql.Identifier(metric)
                )
            )
        conn.execute(
            sql.SQL("create index if not exists {} on {} using brin (ts)").format(
                sql.Identifier(f"{class_table(device_class)}_ts_brin"), table
            )
        )


def upgrade(conn: psycopg.Connection, models: ModelRegistry) -> list[int]:
    """Apply pending migrations and align class tables; returns the versions applied."""
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
        ensure_class_tables(conn, models)
    return applied
