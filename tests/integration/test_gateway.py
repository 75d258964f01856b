"""The MQTT gateway against the real MQTT broker and the real Kafka-protocol broker."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from citybrain.harness import MqttEndpoint
from citybrain.platform import demo_device_codes
from core.topics import KafkaTopics, uplink_topic
from ingest.batch import decode_batch
from tests.integration.helpers import consume, mqtt_client, start_gateway

pytestmark = pytest.mark.integration

CODES = demo_device_codes(3)


async def test_messages_reach_kafka_in_order_and_bad_ones_are_dead_lettered(
    mqtt_endpoint: MqttEndpoint, kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    reg = CollectorRegistry()
    gw = await start_gateway(mqtt_endpoint, kafka_bootstrap, topics, reg)
    pub = mqtt_client(mqtt_endpoint.host, mqtt_endpoint.port)
    try:
        n = 30
        for i in range(n):
            for code in CODES:
                pub.publish(uplink_topic(code), f'{{"v":1,"ts":{i},"metrics":{{"pm25":{i}}}}}', qos=1)
            if i == 10:
                # malformed: a typo in the code, and an unknown uplink kind
                pub.publish("citybrain/up/35020603080000019/telemetry", b'{"v":1}', qos=1)
                pub.publish(f"citybrain/up/{CODES[0]}/bogus", b"x", qos=1)
        msgs = []
        deadline = asyncio.get_running_loop().time() + 20
        while len(msgs) < n * len(CODES) and asyncio.get_running_loop().time() < deadline:
            records = await consume(kafka_bootstrap, topics.raw, 10**6, timeout=1.5)
            # Only this test's telemetry: the broker is shared, and a fresh gateway also gets
            # the statuses other tests' devices left retained.
            msgs = [
                m
                for r in records
                for m in decode_batch(r.value)
                if m.device_code in CODES and m.topic.endswith("/telemetry")
            ]
        assert len(msgs) == n * len(CODES)
        for code in CODES:
            seq = [m.payload for m in msgs if m.device_code == code]
            assert seq == [f'{{"v":1,"ts":{i},"metrics":{{"pm25":{i}}}}}'.encode() for i in range(n)]
        dead = await consume(kafka_bootstrap, topics.deadletter, 2)
        reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
        assert reasons == ["bad_code", "bad_topic"]
        assert {r.value for r in dead} == {b'{"v":1}', b"x"}
        # the gateway kept serving after the bad messages
        assert gw.healthy()
        assert reg.get_sample_value("citybrain_gateway_messages_rejected_total", {"reason": "bad_code"}) == 1
        # Everything it forwarded is on the raw topic: this test's telemetry, and whatever statuses
        # earlier tests on this broker left retained (how many depends on which tests ran before).
        forwarded = [m for r in records for m in decode_batch(r.value)]
        assert reg.get_sample_value("citybrain_gateway_messages_forwarded_total") == len(forwarded)
    finally:
        pub.loop_stop()
        pub.disconnect()
        await gw.stop()
