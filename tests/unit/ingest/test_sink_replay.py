"""Kafka replay (CITYBRAIN_GATEWAY_KAFKA_REPLAY_S): what a shortened Kafka log lost is sent again.

The copies are kept by the Kafka sink, which the gateway sends through; the
gateway counts the regressions and resent messages in its own metrics.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics, _Item


def _sink(replay_s: float = 60.0) -> tuple[KafkaSink, GatewayMetrics]:
    # The gateway's own hook, so its kafka_regressions / kafka_resent metrics are what is checked.
    cfg = GatewayConfig(
        mqtt_host="127.0.0.1", mqtt_port=1, kafka_bootstrap="x:1", topics=KafkaTopics("t"), kafka_replay_s=replay_s
    )
    gw = Gateway(cfg, GatewayMetrics(CollectorRegistry()))
    sink = KafkaSink(
        KafkaSinkConfig("x:1", KafkaTopics("t"), replay_s=replay_s, source="mqtt-gateway"),
        KafkaSinkMetrics(CollectorRegistry()),
        on_resend=gw._record_resend,
    )
    return sink, gw.metrics


def _items(n: int, tag: str) -> list[_Item]:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    loop = asyncio.new_event_loop()
    try:
        return [
            _Item(RawMessage(f"citybrain/up/{tag}{i}/telemetry", b"{}", t, Transport.MQTT), loop.create_future(), 0.0)
            for i in range(n)
        ]
    finally:
        loop.close()


def test_an_offset_at_or_below_one_acknowledged_returns_the_lost_records_for_a_resend() -> None:
    sink, metrics = _sink()
    kept, lost_a, lost_b = _items(2, "k"), _items(3, "a"), _items(4, "b")
    assert sink._retain([(0, 7, kept), (1, 3, _items(1, "p1"))]) == {}
    assert sink._retain([(0, 8, lost_a)]) == {}
    assert sink._retain([(0, 9, lost_b)]) == {}
    # The broker came back with a log ending at 8: records 8 and 9 are gone, 7 survived.
    again = sink._retain([(0, 8, _items(1, "new"))])
    assert again == {0: lost_a + lost_b}
    assert [h.offset for h in sink._held if h.partition == 0] == [7, 8]
    assert [h.offset for h in sink._held if h.partition == 1] == [3]
    assert metrics.kafka_regressions._value.get() == 1
    assert metrics.kafka_resent._value.get() == 7


def test_copies_expire_only_when_a_later_send_succeeds() -> None:
    sink, _ = _sink(replay_s=0.001)
    sink._retain([(0, 1, _items(1, "a"))])
    time.sleep(0.01)
    assert len(sink._held) == 1  # nothing sent since: kept however old it is
    sink._retain([(0, 2, _items(1, "b"))])
    assert [h.offset for h in sink._held] == [2]


async def test_a_burst_is_acked_only_when_its_last_message_is() -> None:
    """submit_many: one future for the burst, resolved by the flush of its last message."""
    sink, _ = _sink(replay_s=0)
    sink._queue = asyncio.Queue(100)
    sink._producer = object()  # type: ignore[assignment]  # _send_raw below stands for Kafka

    async def acked(by_partition: dict[int, list[_Item]]) -> list[tuple[int, list[_Item], asyncio.Future[object]]]:
        out = []
        for p, group in by_partition.items():
            fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            fut.set_result(type("Meta", (), {"offset": 1})())
            out.append((p, group, fut))
        return out

    sink._send_raw = acked  # type: ignore[method-assign]
    t = datetime(2026, 1, 1, tzinfo=UTC)
    raws = [RawMessage(f"citybrain/up/b{i}/telemetry", b"{}", t, Transport.MQTT) for i in range(3)]
    fut = await sink.submit_many(raws)
    items = [sink._queue.get_nowait() for _ in range(3)]
    # The sink's batcher cut the burst across two Kafka batches.
    await sink._flush(items[:2])
    assert not fut.done()
    await sink._flush(items[2:])
    assert fut.done() and fut.exception() is None
    assert (await sink.submit_many([])).done()
