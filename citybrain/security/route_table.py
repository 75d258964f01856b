"""Print the endpoint × role table of docs/security.md, read from the app itself.

``python -m citybrain.security.route_table`` builds the API (nothing connects:
the lifespan never runs) and prints :func:`citybrain.security.policy.markdown_table`
of its routes, to paste between the route-table markers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from citybrain.api import create_api
from citybrain.security.policy import markdown_table, route_rules
from core.topics import KafkaTopics
from devices.models import shipped_models
from ingest.kafka_sink import KafkaSinkConfig

__all__ = ["main"]


def main() -> None:
    """Print the table for the app as :func:`citybrain.api.create_api` builds it."""
    app = create_api(
        "postgresql://unused/none",
        shipped_models(),
        CollectorRegistry(),
        ingest=_placeholder_ingest(),
    )
    print(markdown_table(route_rules(app)), end="")


def _placeholder_ingest() -> KafkaSinkConfig:
    # The webhook is mounted only with a Kafka sink; nothing connects until the lifespan runs.
    return KafkaSinkConfig("127.0.0.1:9", KafkaTopics("citybrain"), partitions=1, source="webhook")


if __name__ == "__main__":
    main()
