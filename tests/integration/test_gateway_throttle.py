"""A flooding device is throttled in the gateway while a normal device's messages all arrive.

Real MQTT broker, real Kafka-protocol broker.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from citybrain.harness import MqttEndpoint
from core.topics import KafkaTopics, uplink_topic
from devices.code import DeviceCode
from devices.models import shipped_models
from ingest.batch import decode_batch
from ingest.throttle import ThrottleConfig, profiles_for
from tests.integration.helpers import consume, mqtt_client, start_gateway

pytestmark = pytest.mark.integration

FLOODER = DeviceCode.build("350206", "0308", 901).full  # air/water station: cadence 60 s
NORMAL = DeviceCode.build("350206", "0701", 902).full  # smart pole: cadence 300 s


async def test_flooding_device_is_throttled_and_reported_while_others_flow(
    mqtt_endpoint: MqttEndpoint, kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    reg = CollectorRegistry()
    # 60× cadence: the flooder may average 1 msg/s, the pole one per 5 s; both a burst of 10.
    throttle = ThrottleConfig(factor=60, burst=10, window_s=1.0)
    # Class code 0308 is shared by several models (air, water, flue-gas stations): the label joins them.
    label = profiles_for(shipped_models().all(), throttle)[0]["0308"].device_class
    gw = await start_gateway(mqtt_endpoint, kafka_bootstrap, topics, reg, throttle=throttle)
    flood = mqtt_client(mqtt_endpoint.host, mqtt_endpoint.port)
    normal = mqtt_client(mqtt_endpoint.host, mqtt_endpoint.port)
    n_flood, n_normal = 400, 8
    try:
        t0 = time.monotonic()
        infos = []
        for i in range(n_flood):
            infos.append(flood.publish(uplink_topic(FLOODER), f'{{"v":1,"ts":{i},"metrics":{{"pm25":1}}}}', qos=1))
            if i % 50 == 0:
                infos.append(
                    normal.publish(uplink_topic(NORMAL), f'{{"v":1,"ts":{i},"metrics":{{"lamp_on":1}}}}', qos=1)
                )
        # every message is acknowledged, throttled ones included: the broker holds nothing back
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 20)
            assert info.is_published()
        elapsed = time.monotonic() - t0

        msgs = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            records = await consume(kafka_bootstrap, topics.raw, 10**6, timeout=1.5)
            msgs = [m for r in records for m in decode_batch(r.value)]
            if sum(m.device_code == NORMAL for m in msgs) >= n_normal:
                break
        normal_got = [m.payload for m in msgs if m.device_code == NORMAL]
        assert normal_got == [f'{{"v":1,"ts":{i},"metrics":{{"lamp_on":1}}}}'.encode() for i in range(0, n_flood, 50)]
        flooder_got = sum(m.device_code == FLOODER for m in msgs)
        # the burst, plus one per second of publishing, plus a little slack for timing
        assert 10 <= flooder_got <= 10 + elapsed + 2
        throttled = reg.get_sample_value("citybrain_gateway_throttled_total", {"class": label})
        assert throttled == n_flood - flooder_got
        assert reg.get_sample_value("citybrain_gateway_throttled_total", {"class": "pole"}) is None
        assert gw.healthy()
    finally:
        for c in (flood, normal):
            c.loop_stop()
            c.disconnect()
        await gw.stop()  # reports the window still open

    # one flood report per window (not one dead letter per message), counts adding up
    dead = await consume(kafka_bootstrap, topics.deadletter, 1, timeout=5)
    dead = await consume(kafka_bootstrap, topics.deadletter, len(dead) + 10, timeout=3)
    headers = [{k: v.decode() for k, v in r.headers} for r in dead]
    assert headers and all(h["reason"] == "throttled" and h["device"] == FLOODER for h in headers)
    assert all(h["class"] == label and h["source"] == "mqtt-gateway" for h in headers)
    assert sum(int(h["count"]) for h in headers) == throttled
    assert len(headers) <= int(elapsed) + 2
    assert dead[0].value.startswith(b'{"v":1,"ts":')
    assert reg.get_sample_value("citybrain_gateway_flood_reports_total") == len(headers)
