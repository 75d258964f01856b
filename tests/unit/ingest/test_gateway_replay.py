"""kafka_replay_s: copies of acknowledged records; what a shortened Kafka log lost is sent again."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics, _Pending


def _gateway(replay_s: float = 60.0) -> Gateway:
    cfg = GatewayConfig(
        mqtt_host="127.0.0.1", mqtt_port=1, kafka_bootstrap="x:1", topics=KafkaTopics("t"), kafka_replay_s=replay_s
    )
    return Gateway(cfg, GatewayMetrics(CollectorRegistry()))


def _items(n: int, tag: str) -> list[_Pending]:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        _Pending(RawMessage(f"citybrain/up/{tag}{i}/telemetry", b"{}", t, Transport.MQTT), i, 1, 0.0) for i in range(n)
    ]


def test_an_offset_at_or_below_one_acknowledged_returns_the_lost_records_for_a_resend() -> None:
    gw = _gateway()
    kept, lost_a, lost_b = _items(2, "k"), _items(3, "a"), _items(4, "b")
    assert gw._retain([(0, 7, kept), (1, 3, _items(1, "p1"))]) == {}
    assert gw._retain([(0, 8, lost_a)]) == {}
    assert gw._retain([(0, 9, lost_b)]) == {}
    # The broker came back with a log ending at 8: records 8 and 9 are gone, 7 survived.
    again = gw._retain([(0, 8, _items(1, "new"))])
    assert again == {0: lost_a + lost_b}
    assert [h.offset for h in gw._held if h.partition == 0] == [7, 8]
    assert [h.offset for h in gw._held if h.partition == 1] == [3]
    assert gw.metrics.kafka_regressions._value.get() == 1
    assert gw.metrics.kafka_resent._value.get() == 7


def test_copies_expire_only_when_a_later_send_succeeds() -> None:
    gw = _gateway(replay_s=0.001)
    gw._retain([(0, 1, _items(1, "a"))])
    time.sleep(0.01)
    assert len(gw._held) == 1  # nothing sent since: kept however old it is
    gw._retain([(0, 2, _items(1, "b"))])
    assert [h.offset for h in gw._held] == [2]
