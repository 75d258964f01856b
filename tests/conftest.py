"""Shared fixtures: real servers from the service harness, one set per test session.

Isolation per test: a unique Kafka topic prefix and consumer group, and a
fresh PostgreSQL database cloned from a migrated template. When
``CITYBRAIN_DATABASE_URL`` / ``CITYBRAIN_KAFKA_BOOTSTRAP`` / ``CITYBRAIN_MQTT_URL``
are set, those servers are used instead of embedded ones.

``CITYBRAIN_DATABASE_URL`` may point at a TimescaleDB server: the template then
has the extension, whose background scheduler keeps a connection to every
database it is created in, and PostgreSQL refuses to clone a database someone
is connected to. So the template is closed to connections once migrated
(``allow_connections false``, ``is_template true``: the extension's launcher
starts no scheduler there), its remaining sessions are ended, and a clone that
still meets one ends it and tries again. Tests of the natively partitioned
layout carry ``@pytest.mark.plain_partitions("why")`` and are skipped there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from citybrain.harness import MqttEndpoint, Services, pg_base_dir
from citybrain.kafka_compat import install_empty_fetch_backoff
from citybrain.migrations import upgrade
from core.topics import KafkaTopics
from devices.models import ModelRegistry, shipped_models
from streams import timescale

install_empty_fetch_backoff(0.05)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``make test``'s parallel run (``-n 2 --dist loadfile``): a worker runs a whole module, and one runs all e2e.

    A module on one worker: its module-scoped fixtures start once. All the e2e modules on one
    worker: no two whole platforms (servers, services and Chromium each) run at once on the
    two cores, and their tests meet only the lighter rest of the suite. (xdist's own
    ``loadgroup`` cannot say this with the pytest this project uses: it renames test ids
    through an attribute pytest 9 no longer reads.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndE2e(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/e2e" if path.startswith("tests/e2e/") else path

    return ModulesAndE2e(config, log)


@pytest.fixture(scope="session")
def models() -> ModelRegistry:
    return shipped_models()


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    root = Path(tempfile.mkdtemp(prefix="citybrain-test-"))
    svc = Services(
        root,
        database_url=os.environ.get("CITYBRAIN_DATABASE_URL"),
        mqtt_url=os.environ.get("CITYBRAIN_MQTT_URL"),
        kafka_bootstrap=os.environ.get("CITYBRAIN_KAFKA_BOOTSTRAP"),
        pg_name=f"test-{os.getpid()}",
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        # The embedded PostgreSQL data of this session is not needed again.
        shutil.rmtree(pg_base_dir() / svc.pg_name, ignore_errors=True)
        (pg_base_dir() / f"{svc.pg_name}.log").unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    assert services.kafka_bootstrap
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def mqtt_endpoint(services: Services) -> MqttEndpoint:
    assert services.mqtt is not None
    return services.mqtt


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _end_sessions(conn: psycopg.Connection, dbname: str) -> None:
    """End every other session on ``dbname`` (TimescaleDB's scheduler included)."""
    conn.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
        (dbname,),
    )


@pytest.fixture(scope="session")
def _migrated_template(services: Services, models: ModelRegistry) -> tuple[str, bool]:
    """(name, on TimescaleDB) of the migrated template database, closed to connections."""
    assert services.database_url
    name = f"cb_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    with psycopg.connect(_with_db(services.database_url, name)) as conn:
        upgrade(conn, models)
        conn.commit()
        on_timescale = timescale.probe(conn).installed
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'alter database "{name}" with allow_connections false')
        # Not needed to clone it as its owner; it only keeps TimescaleDB's launcher away.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'alter database "{name}" with is_template true')
        _end_sessions(conn, name)
    return name, on_timescale


@pytest.fixture(scope="session")
def pg_template(_migrated_template: tuple[str, bool]) -> str:
    """A migrated template database; each test clones it."""
    return _migrated_template[0]


@pytest.fixture(scope="session")
def on_timescale(_migrated_template: tuple[str, bool]) -> bool:
    """The database server runs TimescaleDB (the class tables are hypertables)."""
    return _migrated_template[1]


@pytest.fixture(autouse=True)
def _plain_partitions_only(request: pytest.FixtureRequest) -> None:
    # Only tests that carry the marker look at the database server (unit tests start nothing).
    marker = request.node.get_closest_marker("plain_partitions")
    if marker is not None and request.getfixturevalue("on_timescale"):
        why = marker.args[0] if marker.args else "tests the natively partitioned layout"
        pytest.skip(f"the database server runs TimescaleDB, and this {why}")


@pytest.fixture
def database_url(services: Services, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    assert services.database_url
    name = f"cb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        for attempt in range(50):
            try:
                conn.execute(f'create database "{name}" template "{pg_template}"')
                break
            except psycopg.errors.ObjectInUse:
                # "source database … is being accessed by other users": a session that
                # opened before the template was closed, or a scheduler still leaving.
                if attempt == 49:
                    raise
                _end_sessions(conn, pg_template)
                time.sleep(0.05 * (attempt + 1))
    try:
        yield _with_db(services.database_url, name)
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def topics() -> KafkaTopics:
    """A unique topic prefix for one test."""
    return KafkaTopics(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(os.environ.get("CITYBRAIN_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
