"""The platform's topics on the embedded broker are bounded: noida-db keeps its whole log in memory."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from citybrain.platform import create_topics
from core.topics import KafkaTopics

pytestmark = pytest.mark.integration


async def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {str(e[0]): str(e[1]) for e in resp.resources[0][4]}
    finally:
        await admin.close()


def test_topics_get_a_bounded_retention_also_when_they_exist(kafka_bootstrap: str) -> None:
    topics = KafkaTopics(f"t{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, topics, 2, ["air"])  # a demo's first start: the broker's defaults
    assert asyncio.run(_configs(kafka_bootstrap, topics.raw))["retention.ms"] == "604800000"
    # Restarted on the same data dir: the existing topics are bounded too.
    create_topics(kafka_bootstrap, topics, 2, ["air"], retention_ms=600_000)
    for name in (topics.raw, topics.readings("air"), topics.alerts, topics.deadletter):
        got = asyncio.run(_configs(kafka_bootstrap, name))
        # Retention drops whole segments: one always written to is closed by segment.ms.
        assert (got["retention.ms"], got["segment.ms"]) == ("600000", "120000"), name
    fresh = KafkaTopics(f"t{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, fresh, 2, ["air"], retention_ms=300_000)
    got = asyncio.run(_configs(kafka_bootstrap, fresh.raw))
    assert (got["retention.ms"], got["segment.ms"]) == ("300000", "60000")
