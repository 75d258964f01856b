"""``citybrain db upgrade`` on a server where TimescaleDB is installed but not preloaded.

Such a server lists ``timescaledb`` in ``pg_available_extensions``, and
``create extension timescaledb`` ends the session with a FATAL error (the
library must be in ``shared_preload_libraries``), which no savepoint can catch.
The embedded PostgreSQL simulates it, with no mock of the server:

* a view named ``pg_available_extensions`` in a schema that comes before
  ``pg_catalog`` on the database's ``search_path`` lists the extension;
* an event trigger on ``CREATE EXTENSION`` terminates its own backend, which is
  what the FATAL error does to the connection.

``shared_preload_libraries`` is the server's real (empty) setting.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from citybrain.harness import Services
from citybrain.migrations import upgrade
from devices.models import ModelRegistry
from streams import timescale

pytestmark = [
    pytest.mark.integration,
    pytest.mark.plain_partitions("simulates a server without timescaledb preloaded"),
]

SIMULATE = """
create schema fake_catalog;
create view fake_catalog.pg_available_extensions as
  select 'timescaledb'::name as name, '2.28.3'::text as default_version,
         null::text as installed_version, 'simulated'::text as comment;
create function fake_catalog.not_preloaded() returns event_trigger language plpgsql as $$
begin
  -- FATAL:  extension "timescaledb" must be preloaded: the server closes the connection.
  perform pg_terminate_backend(pg_backend_pid());
end $$;
create event trigger timescaledb_not_preloaded on ddl_command_start when tag in ('CREATE EXTENSION')
  execute function fake_catalog.not_preloaded();
"""


def _with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


@pytest.fixture
def not_preloaded_url(services: Services) -> Iterator[str]:
    """An empty database on a server that looks like "TimescaleDB installed, not preloaded"."""
    assert services.database_url
    name = f"cb_tsfb_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = _with_db(services.database_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SIMULATE)
            # New sessions (the upgrade's and the probe's own) find the view before pg_catalog;
            # tables are still created in public.
            conn.execute(f'alter database "{name}" set search_path = public, fake_catalog, pg_catalog')
        yield url
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def test_the_simulated_server_reads_and_fails_like_the_real_one(not_preloaded_url: str) -> None:
    with psycopg.connect(not_preloaded_url, autocommit=True) as conn:
        cap = timescale.probe(conn)
        assert (cap.available, cap.installed, cap.preloaded, cap.usable) == (True, False, False, False)
        # What the old upgrade did next: trying the extension ends the session.
        with pytest.raises(psycopg.OperationalError):
            conn.execute("create extension if not exists timescaledb")
        assert conn.closed or conn.broken


def test_upgrade_falls_back_to_native_partitions_when_not_preloaded(
    not_preloaded_url: str, models: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: create extension was tried inside the upgrade's transaction, the FATAL error
    # closed the connection and the whole upgrade rolled back ("the connection is closed").
    with caplog.at_level(logging.WARNING, logger="streams.timescale"), psycopg.connect(not_preloaded_url) as conn:
        assert upgrade(conn, models)
        conn.commit()
        assert conn.execute("select relkind from pg_class where oid = 'readings_air'::regclass").fetchone() == ("p",)
        assert conn.execute("select relkind from pg_class where oid = 'rollup_air_5m'::regclass").fetchone() == ("p",)
        assert conn.execute("select count(*) from pg_extension where extname = 'timescaledb'").fetchone() == (0,)
        assert upgrade(conn, models) == []  # and again, as every start does
    assert "shared_preload_libraries" in caplog.text


def test_injected_facts_decide_before_anything_is_tried(not_preloaded_url: str, models: ModelRegistry) -> None:
    facts: list[timescale.Capability] = []

    def installed_not_preloaded(conn: psycopg.Connection) -> timescale.Capability:
        facts.append(timescale.Capability(available=True, version=None, preloaded=False))
        return facts[-1]

    with psycopg.connect(not_preloaded_url) as conn:
        upgrade(conn, models, timescale_detect=installed_not_preloaded)
        conn.commit()
        assert conn.execute("select relkind from pg_class where oid = 'readings_air'::regclass").fetchone() == ("p",)
    assert facts


@pytest.mark.parametrize(
    ("setting", "preloaded"),
    [
        ("", False),
        ("pg_stat_statements", False),
        ("timescaledb", True),
        ("pg_stat_statements, timescaledb", True),
        ('"$libdir/timescaledb"', True),
        ("timescaledb-2.28.3", True),
        ("timescaledb_toolkit", False),
    ],
)
def test_preloaded_reads_the_library_list(setting: str, preloaded: bool) -> None:
    cap = timescale._capability((True, None, setting))
    assert cap.preloaded is preloaded
