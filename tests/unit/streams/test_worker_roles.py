"""CITYBRAIN_WORKER_ROLE: what each kind of worker consumes (built, never connected)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from citybrain.settings import Settings
from core.topics import KafkaTopics
from devices.models import ModelRegistry, shipped_models
from streams.app import WORKER_ROLES, WorkerConfig, create_app


def _cfg(role: str, tmp_path: Path) -> WorkerConfig:
    return WorkerConfig(
        kafka_bootstrap="127.0.0.1:9",
        database_url="postgresql://nowhere/none",
        topics=KafkaTopics("t"),
        partitions=2,
        data_dir=str(tmp_path),
        web_port=6066,
        app_id="t-streams",
        role=role,
    )


@pytest.fixture(scope="module")
def models() -> ModelRegistry:
    return shipped_models()


@pytest.mark.parametrize(
    ("role", "app_id", "agents"),
    [
        # ingest workers also copy the dead letters for the debug view; alerting ones send notifications
        ("all", "t-streams", {"normalise": {"t.raw"}, "deadletters": {"t.deadletter"}, "notify": {"t.alerts"}}),
        ("ingest", "t-streams", {"normalise": {"t.raw"}, "deadletters": {"t.deadletter"}}),
        # its own consumer group, over every class's readings topic
        (
            "alerts",
            "t-streams-alerts",
            {"alerts": {"t.readings.air", "t.readings.manhole", "t.readings.water"}, "notify": {"t.alerts"}},
        ),
    ],
)
def test_each_role_consumes_its_own_topics(
    role: str, app_id: str, agents: dict[str, set[str]], tmp_path: Path, models: ModelRegistry
) -> None:
    app = create_app(_cfg(role, tmp_path), CollectorRegistry(), models)
    assert app.conf.id == app_id
    found = {name.rsplit(".", 1)[-1]: set(ag.channel.topics) for name, ag in app.agents.items()}
    assert set(found) == set(agents)
    for name, topics in agents.items():
        assert topics <= found[name], name


def test_unknown_role_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="worker role"):
        _cfg("everything", tmp_path)
    assert set(WORKER_ROLES) == {"all", "ingest", "alerts"}


def test_role_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYBRAIN_WORKER_ROLE", "alerts")
    assert Settings().worker_role == "alerts"
    assert Settings(_env_file=None, worker_role="ingest").worker_role == "ingest"  # type: ignore[call-arg]
    monkeypatch.setenv("CITYBRAIN_WORKER_ROLE", "streams")
    with pytest.raises(ValueError):
        Settings()
