"""kafka_hold_ms: acks wait until the broker outlived them; what a shortened log lost is sent again."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics, _Pending


def _gateway(hold_ms: int = 1500) -> Gateway:
    cfg = GatewayConfig(
        mqtt_host="127.0.0.1", mqtt_port=1, kafka_bootstrap="x:1", topics=KafkaTopics("t"), kafka_hold_ms=hold_ms
    )
    return Gateway(cfg, GatewayMetrics(CollectorRegistry()))


def _items(n: int, tag: str) -> list[_Pending]:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        _Pending(RawMessage(f"citybrain/up/{tag}{i}/telemetry", b"{}", t, Transport.MQTT), i, 1, 0.0) for i in range(n)
    ]


def test_held_records_are_released_only_once_the_broker_was_seen_alive_after_the_hold() -> None:
    gw = _gateway()
    gw._alive_at = 100.0
    gw._held.clear()
    assert gw._hold([(0, 10, _items(3, "a"))]) == {}
    gw._release(200.0)  # time alone releases nothing: the broker was last seen at 100
    assert gw._unacked == 0 and len(gw._held) == 1
    gw._alive_at = gw._held[0].acked_at + 1.5
    gw._release(gw._alive_at)
    assert not gw._held
    assert gw.metrics.forwarded._value.get() == 3


def test_an_offset_at_or_below_one_acknowledged_sends_the_lost_held_messages_again() -> None:
    gw = _gateway()
    kept, lost_a, lost_b = _items(2, "k"), _items(3, "a"), _items(4, "b")
    assert gw._hold([(0, 7, kept), (1, 3, _items(1, "p1"))]) == {}
    assert gw._hold([(0, 8, lost_a)]) == {}
    assert gw._hold([(0, 9, lost_b)]) == {}
    # The broker came back with a log ending at 8: records 8 and 9 are gone, 7 survived.
    again = gw._hold([(0, 8, _items(1, "new"))])
    assert again == {0: lost_a + lost_b}
    assert [h.offset for h in gw._held if h.partition == 0] == [7, 8]
    assert [h.offset for h in gw._held if h.partition == 1] == [3]
    assert gw.metrics.kafka_regressions._value.get() == 1
    assert gw.metrics.kafka_resent._value.get() == 7
