"""Failover of the existing MQTT → Kafka gateway (ingest/gateway.py).

(a) The gateway process is SIGKILLed mid-stream and restarted with the same
    client id: every QoS 1 message still reaches Kafka (duplicates allowed).
(b) Two gateways share one ``$share/<group>/…`` subscription: together they
    forward every message exactly once.

Both run against a private Mosquitto started by the harness, not the embedded
amqtt broker: (b) needs shared subscriptions, which amqtt lacks, and for (a)
amqtt 0.12.1 was measured to deliver nothing to the restarted gateway — neither
the unacknowledged in-flight QoS 1 messages nor those queued for the persistent
session while it was down (399 of 400 lost) — so amqtt cannot back the
at-least-once guarantee; it is a demo broker only.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from citybrain.harness import MqttEndpoint, start_mosquitto
from citybrain.platform import demo_device_codes
from core.topics import KafkaTopics, uplink_topic
from ingest.batch import decode_batch
from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics
from tests.integration.helpers import consume, create_topics, mqtt_client

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CODES = demo_device_codes(4)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttEndpoint]:
    """A private Mosquitto configured as production should be for the gateway.

    The machine's Mosquitto (Debian's default: 20 in flight, 1000 queued per
    session) drops QoS 1 messages beyond its queue while a gateway is down, so
    these tests start their own with deep queues. Mosquitto is installed on
    this machine and in CI: a missing binary fails the test.
    """
    proc, ep = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield ep
    finally:
        proc.stop()


class GatewayProcess:
    """``python -m citybrain.cli gateway`` with a fixed client id (persistent session)."""

    def __init__(self, broker: MqttEndpoint, bootstrap: str, topics: KafkaTopics, client_id: str, log: Path) -> None:
        self.env = {
            **os.environ,
            "CITYBRAIN_MQTT_URL": broker.url,
            "CITYBRAIN_KAFKA_BOOTSTRAP": bootstrap,
            "CITYBRAIN_TOPIC_PREFIX": topics.prefix,
            "CITYBRAIN_GATEWAY_CLIENT_ID": client_id,
            "CITYBRAIN_PARTITIONS": "4",
            # A long linger holds received messages unacknowledged for seconds, so the
            # kill below deterministically hits messages in flight between MQTT and Kafka.
            "CITYBRAIN_GATEWAY_LINGER_MS": "1500",
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citybrain.cli", "gateway"], cwd=ROOT, env=self.env, stdout=out, stderr=out
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def gateway_log(artifacts_dir: Path) -> Iterator[Path]:
    path = artifacts_dir / f"gateway-failover-{uuid.uuid4().hex[:6]}.log"
    yield path


async def _forwarded(bootstrap: str, topic: str, want: int, timeout: float) -> list[bytes]:
    deadline = asyncio.get_running_loop().time() + timeout
    payloads: list[bytes] = []
    while asyncio.get_running_loop().time() < deadline:
        records = await consume(bootstrap, topic, 10**6, timeout=1.0)
        payloads = [m.payload for r in records for m in decode_batch(r.value)]
        if len(set(payloads)) >= want:
            break
    return payloads


async def _wait_subscribed(broker: MqttEndpoint, bootstrap: str, topics: KafkaTopics) -> None:
    """Publish probes until one reaches Kafka: the gateway is connected and subscribed."""
    probe = mqtt_client(broker.host, broker.port)
    try:
        for i in range(100):
            probe.publish(uplink_topic(CODES[0]), f'{{"probe":{i}}}', qos=1).wait_for_publish(5)
            if await consume(bootstrap, topics.raw, 1, timeout=0.5):
                return
        raise AssertionError("gateway never forwarded a probe")
    finally:
        probe.loop_stop()
        probe.disconnect()


async def test_sigkilled_gateway_loses_no_qos1_message(
    broker: MqttEndpoint, kafka_bootstrap: str, topics: KafkaTopics, gateway_log: Path
) -> None:
    await create_topics(kafka_bootstrap, [topics.raw], 4)
    await create_topics(kafka_bootstrap, [topics.deadletter, topics.alerts])
    client_id = f"gw-failover-{uuid.uuid4().hex[:6]}"
    gw = GatewayProcess(broker, kafka_bootstrap, topics, client_id, gateway_log)
    gw.start()
    pub = mqtt_client(broker.host, broker.port)
    n = 400
    try:
        await _wait_subscribed(broker, kafka_bootstrap, topics)
        sent = [f'{{"v":1,"ts":{i},"metrics":{{"pm25":{i % 300}}}}}'.encode() for i in range(n)]
        half = n // 2
        for i, payload in enumerate(sent[:half]):
            pub.publish(uplink_topic(CODES[i % len(CODES)]), payload, qos=1).wait_for_publish(10)
        await asyncio.sleep(0.3)  # delivered to the gateway, waiting in its batch, not acknowledged
        gw.kill()
        before = await consume(kafka_bootstrap, topics.raw, 10**6, timeout=0.5)
        in_kafka = {m.payload for r in before for m in decode_batch(r.value)}
        assert not in_kafka & set(sent[:half]), "the kill came too late to test in-flight messages"
        for i, payload in enumerate(sent[half:], start=half):  # published while no gateway runs
            pub.publish(uplink_topic(CODES[i % len(CODES)]), payload, qos=1).wait_for_publish(10)
        gw.start()
        payloads = await _forwarded(kafka_bootstrap, topics.raw, len(sent) + 1, timeout=40)
        counts = collections.Counter(payloads)
        lost = [p for p in sent if counts[p] == 0]
        assert lost == [], f"{len(lost)} QoS 1 messages lost on {broker.host}:{broker.port}"
        dups = sum(c - 1 for p, c in counts.items() if p in set(sent))
        print(f"\nfailover on {broker.port}: {n} sent, {len(payloads)} forwarded incl. probes, {dups} duplicates")
    finally:
        pub.loop_stop()
        pub.disconnect()
        gw.stop()


async def test_shared_subscription_forwards_each_message_exactly_once(
    broker: MqttEndpoint, kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    await create_topics(kafka_bootstrap, [topics.raw], 4)
    await create_topics(kafka_bootstrap, [topics.deadletter, topics.alerts])
    group = f"g{uuid.uuid4().hex[:8]}"
    gateways: list[tuple[Gateway, CollectorRegistry]] = []
    for k in range(2):
        reg = CollectorRegistry()
        gw = Gateway(
            GatewayConfig(
                broker.host,
                broker.port,
                kafka_bootstrap,
                topics,
                partitions=4,
                linger_ms=10,
                bridge=False,
                shared_group=group,
                client_id=f"{group}-gw{k}",
            ),
            GatewayMetrics(reg),
        )
        await gw.start()
        await gw.wait_connected(10)
        gateways.append((gw, reg))
    await asyncio.sleep(0.5)  # both subscriptions in place before the first message
    pub = mqtt_client(broker.host, broker.port)
    n = 300
    try:
        # a unique code prefix per test run keeps other runs' messages out of the count
        sent = [f'{{"v":1,"ts":{i},"run":"{group}"}}'.encode() for i in range(n)]
        for i, payload in enumerate(sent):
            pub.publish(uplink_topic(CODES[i % len(CODES)]), payload, qos=1).wait_for_publish(10)
        payloads = await _forwarded(kafka_bootstrap, topics.raw, n, timeout=30)
        mine = [p for p in payloads if group.encode() in p]
        assert collections.Counter(mine) == collections.Counter(sent)  # each once, none missing
        shares = [reg.get_sample_value("citybrain_gateway_messages_forwarded_total") or 0 for _, reg in gateways]
        assert sum(shares) == n
        assert all(s > 0 for s in shares), f"one gateway got nothing: {shares}"
        print(f"\nshared subscription: {n} messages, split {shares}")
    finally:
        pub.loop_stop()
        pub.disconnect()
        for gw, _ in gateways:
            await gw.stop()
