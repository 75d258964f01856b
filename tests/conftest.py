"""Shared fixtures: real servers from the service harness, one set per test session.

Isolation per test: a unique Kafka topic prefix and consumer group, and a
fresh PostgreSQL database cloned from a migrated template. When
``CITYBRAIN_DATABASE_URL`` / ``CITYBRAIN_KAFKA_BOOTSTRAP`` / ``CITYBRAIN_MQTT_URL``
are set, those servers are used instead of embedded ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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

install_empty_fetch_backoff(0.05)


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


@pytest.fixture(scope="session")
def pg_template(services: Services, models: ModelRegistry) -> str:
    """A migrated template database; each test clones it."""
    assert services.database_url
    name = f"cb_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    with psycopg.connect(_with_db(services.database_url, name)) as conn:
        upgrade(conn, models)
    return name


@pytest.fixture
def database_url(services: Services, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    assert services.database_url
    name = f"cb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}" template "{pg_template}"')
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
