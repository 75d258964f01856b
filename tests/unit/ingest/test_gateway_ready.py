"""The gateway is ready (``wait_connected``) on the SUBACK granting its uplink subscription, not on the CONNACK.

Between the two, the broker does not yet route devices' messages to it: a caller that
publishes then (a test, a supervisor's readiness probe) would lose them with a clean session,
or wait on a fixed sleep. paho's callbacks are called here as its network thread calls them.
"""

from __future__ import annotations

import threading

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
