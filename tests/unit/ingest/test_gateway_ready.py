"""The gateway is ready (``wait_connected``) on the SUBACK granting its uplink subscription, not on the CONNACK.

Between the two, the broker does not yet route devices' messages to it: a caller that
publishes then (a test, a supervisor's readiness probe) would lose them with a clean session,
or wait on a fixed sleep. paho's callbacks are called here as its network thread calls them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry

from core.topics import KafkaTopics
from ingest.gateway import Gateway, GatewayConfig, GatewayError, GatewayMetrics, thread_role


class _Client:
    """What ``_on_connect`` calls on paho's client: ``subscribe`` returns (result, message id)."""

    def __init__(self) -> None:
        self.filters: list[str] = []

    def subscribe(self, topic: str, qos: int = 0) -> tuple[int, int]:
        self.filters.append(topic)
        return 0, 41


def _gateway() -> Gateway:
    cfg = GatewayConfig(mqtt_host="127.0.0.1", mqtt_port=1, kafka_bootstrap="x:1", topics=KafkaTopics("t"))
    return Gateway(cfg, GatewayMetrics(CollectorRegistry()))


def _connack(gw: Gateway, client: _Client) -> None:
    gw._on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, identifier=0), None)  # type: ignore[arg-type]


async def test_connected_but_not_yet_subscribed_is_not_ready() -> None:
    gw, client = _gateway(), _Client()
    _connack(gw, client)
    assert client.filters == ["citybrain/up/+/+"]
    with pytest.raises(GatewayError, match="acknowledged subscription"):
        await gw.wait_connected(0.2)
    # Another SUBACK (not the uplink subscription's message id) changes nothing.
    gw._on_subscribe(client, None, 7, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)  # type: ignore[arg-type]
    with pytest.raises(GatewayError):
        await gw.wait_connected(0.2)
    gw._on_subscribe(client, None, 41, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)  # type: ignore[arg-type]
    await gw.wait_connected(0.2)
    # A lost connection makes it wait for the next SUBACK again.
    gw._on_disconnect(client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0), None)  # type: ignore[arg-type]
    with pytest.raises(GatewayError):
        await gw.wait_connected(0.2)


async def test_a_refused_subscription_is_named() -> None:
    gw, client = _gateway(), _Client()
    _connack(gw, client)
    gw._on_subscribe(client, None, 41, [ReasonCode(PacketTypes.SUBACK, identifier=0x80)], None)  # type: ignore[arg-type]
    with pytest.raises(GatewayError, match="refused the uplink subscription"):
        await gw.wait_connected(0.2)


def test_the_gateways_threads_are_labelled_by_role() -> None:
    assert thread_role(threading.Thread(name="paho-mqtt-client-gw1")) == "mqtt"
    assert thread_role(threading.main_thread()) == "asyncio"
    assert thread_role(threading.Thread(name="asyncio_0")) == "other"


def _until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.001)


async def test_a_full_hand_off_blocks_pahos_thread_until_the_loop_makes_room() -> None:
    cfg = GatewayConfig(
        mqtt_host="127.0.0.1", mqtt_port=1, kafka_bootstrap="x:1", topics=KafkaTopics("t"), queue_max=2, throttle=None
    )
    gw = Gateway(cfg, GatewayMetrics(CollectorRegistry()))
    gw._loop = asyncio.get_running_loop()
    msgs = [mqtt.MQTTMessage(i + 1, b"citybrain/up/35020603080000017/telemetry") for i in range(3)]
    paho = threading.Thread(target=lambda: [gw._on_message(None, None, m) for m in msgs])  # type: ignore[arg-type]
    paho.start()
    # The loop is woken once for the burst; the third message waits for room.
    await asyncio.wait_for(gw._wakeup.wait(), 5)
    await asyncio.to_thread(_until, lambda: not gw._room.is_set())  # paho's thread waits for room
    assert len(gw._inbox) == 2 and paho.is_alive()
    gw._inbox.popleft()
    gw._room.set()
    await asyncio.to_thread(paho.join, 5)
    assert not paho.is_alive() and [m.mid for m in gw._inbox] == [2, 3]
    assert gw.metrics.backpressure._value.get() > 0
