"""Downstream topics per data grade, on the real Kafka-protocol broker and real MQTT brokers.

* The stream pipeline publishes the full record on ``{prefix}.readings.manhole``
  (rssi, an ``internal`` metric, included) and the public view on
  ``{prefix}.readings.manhole.public`` (rssi absent); air has only public
  metrics and gets no extra topic.
* The gateway's bridge re-publishes the public view on ``citybrain/down/…`` and
  the graded views on ``citybrain/down-internal/…`` and ``citybrain/down-sensitive/…``.
* On Mosquitto with the rendered ACL, an app granted ``public`` receives nothing
  from the internal view, and an app granted ``internal`` for one district
  receives only that district.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.harness import MqttEndpoint, start_mosquitto
from core.records import RawMessage, Transport
from core.topics import KafkaTopics, downstream_topic, uplink_topic
from devices.code import DeviceCode
from devices.credentials import (
    ServiceUser,
    mosquitto_hash,
    parse_app_user,
    render_acl_file,
    render_password_file,
)
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics
from streams.downstream import plan_views
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics
from tests.integration.helpers import MqttRecorder, await_for, consume, create_topics, wait_for

pytestmark = pytest.mark.integration

_HAS_MOSQUITTO = bool(shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin"))


class Recorder(MqttRecorder):
    """A recorder that reads the JSON documents received on a topic."""

    def on(self, topic: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p in self.messages if t == topic]


def _gateway_config(
    ep: MqttEndpoint, bootstrap: str, topics: KafkaTopics, classes: tuple[str, ...], **kw: int
) -> GatewayConfig:
    """A gateway on the test broker and Kafka, bridging ``classes`` downstream, with its own client id."""
    return GatewayConfig(
        ep.host,
        ep.port,
        bootstrap,
        topics,
        mqtt_username=ep.username,
        mqtt_password=ep.password,
        device_classes=classes,
        client_id=f"gw-{uuid.uuid4().hex[:6]}",
        **kw,  # type: ignore[arg-type]
    )


def _metrics(doc: dict) -> set[str]:
    return {r["metric"] for r in doc["readings"]}


async def test_public_views_lack_graded_metrics_on_kafka_and_mqtt(
    database_url: str, models: ModelRegistry, kafka_bootstrap: str, mqtt_endpoint: MqttEndpoint, topics: KafkaTopics
) -> None:
    serial = random.randint(1, 999_999)
    cover = DeviceCode.build("350206", "0102", serial).full  # sewage cover
    air = DeviceCode.build("350206", "0308", serial).full
    plan = plan_views(models)
    assert plan.kafka_topics(topics) == [topics.readings_view("manhole", "public")]
    names = [topics.raw, topics.readings("manhole"), topics.readings("air"), topics.alerts, topics.deadletter]
    await create_topics(kafka_bootstrap, [*names, *plan.kafka_topics(topics)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    sent: list[str] = []

    async def publish(
        topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        sent.append(topic)
        await producer.send_and_wait(topic, value, key=key, headers=list(headers or []) or None)

    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    reg = CollectorRegistry()
    pipe = Pipeline(
        PipelineConfig(topics=topics),
        pool,
        models,
        publish,
        PipelineMetrics(reg),
        ReadingStore(pool, models, StoreMetrics(reg)),
    )
    await Ledger(pool, models).register(NewDevice(cover, "manhole-cover"))
    await Ledger(pool, models).register(NewDevice(air, "air-station"))
    gw = Gateway(
        _gateway_config(mqtt_endpoint, kafka_bootstrap, topics, ("air", "manhole")), GatewayMetrics(CollectorRegistry())
    )
    app = Recorder.at(mqtt_endpoint)
    down = {g: downstream_topic("350206", "manhole", cover, g) for g in ("public", "internal", "sensitive")}
    try:
        app.subscribe(*down.values(), downstream_topic("350206", "air", air))
        await gw.start()
        await gw.wait_connected(20)
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)  # recent, whatever the date
        # The bridge starts at the latest offsets once it joined its group: publish until it forwards.
        for i in range(60):
            t = t0 + timedelta(minutes=i)
            batch = [
                RawMessage(
                    uplink_topic(cover),
                    encode(t, {"tilt": 2.5, "rssi": -97, "battery": 80}),
                    datetime.now(UTC),
                    Transport.MQTT,
                    cover,
                ),
                RawMessage(uplink_topic(air), encode(t, {"pm25": 30}), datetime.now(UTC), Transport.MQTT, air),
            ]
            await pipe.process([encode_batch(batch)])
            if all(app.on(t) for t in down.values()):
                break
            await asyncio.sleep(0.5)
        # MQTT: the public view has no rssi; the internal and sensitive views have it.
        assert app.on(down["public"]) and all(_metrics(d) == {"tilt", "battery"} for d in app.on(down["public"]))
        for g in ("internal", "sensitive"):
            assert app.on(down[g]) and all(_metrics(d) == {"tilt", "battery", "rssi"} for d in app.on(down[g]))
        assert wait_for(lambda: bool(app.on(downstream_topic("350206", "air", air))), timeout=10)
        # Kafka: the full topic has rssi, the public view does not; air has no view topic.
        n = sent.count(topics.readings("manhole"))
        full = await consume(kafka_bootstrap, topics.readings("manhole"), n)
        public = await consume(kafka_bootstrap, topics.readings_view("manhole", "public"), n)
        assert len(full) == len(public) == n
        assert all(_metrics(json.loads(r.value)) == {"tilt", "battery", "rssi"} for r in full)
        assert all(_metrics(json.loads(r.value)) == {"tilt", "battery"} for r in public)
        assert all(r.key == cover.encode() for r in public)
        assert not any(t.startswith(topics.readings("air") + ".") for t in sent)
    finally:
        app.close()
        await gw.stop()
        await producer.stop()
        await pool.close()


def _sentinel(publisher: MqttRecorder, topic: str, payload: bytes, *receivers: MqttRecorder) -> None:
    """Publish ``payload`` (QoS 1) and wait until every receiver has it: what was routed before it has arrived."""
    publisher.c.publish(topic, payload, qos=1).wait_for_publish(10)
    assert wait_for(lambda: all((topic, payload) in r.messages for r in receivers), timeout=10)


@pytest.mark.skipif(not _HAS_MOSQUITTO, reason="mosquitto is not installed")
def test_mosquitto_app_receives_only_its_granted_grades(tmp_path: Path) -> None:
    gateway = ServiceUser("cb-gateway", "gateway-secret-0123", "gateway")
    public_app = parse_app_user("app-public:public:public-secret-0123")
    ops_app = parse_app_user("app-ops:internal:350206:ops-secret-01234")
    users = [gateway, public_app, ops_app]
    (tmp_path / "passwd").write_text(render_password_file((u.name, mosquitto_hash(u.secret)) for u in users))
    (tmp_path / "acl").write_text(render_acl_file(users))
    proc, ep = start_mosquitto(tmp_path / "mosquitto", password_file=tmp_path / "passwd", acl_file=tmp_path / "acl")
    clients = [Recorder(ep.port, username=u.name, password=u.secret) for u in users]
    gw, pub, ops = clients
    try:
        for c in (pub, ops):
            c.subscribe("citybrain/#", "citybrain/down-internal/#", "citybrain/down-sensitive/#")
        assert gw.connected.wait(20)
        code = "35020601020000016"
        sent = {
            downstream_topic(d, "manhole", code, g): json.dumps({"grade": g, "district": d}).encode()
            for d in ("350206", "350203")
            for g in ("public", "internal", "sensitive")
        }
        for topic, payload in sent.items():
            gw.c.publish(topic, payload, qos=1).wait_for_publish(10)
        # The publisher's rights are proven by the ops app receiving its internal view.
        assert wait_for(lambda: downstream_topic("350206", "manhole", code, "internal") in ops.topics(), timeout=10)
        assert wait_for(lambda: downstream_topic("350203", "manhole", code, "public") in pub.topics(), timeout=10)
        # Nothing else is on its way once a last message, sent after every other was acknowledged
        # (so routed), has arrived: each subscriber gets one publisher's messages in order.
        _sentinel(gw, downstream_topic("350206", "manhole", code), b"sentinel-1", pub, ops)
        assert set(pub.topics()) == {downstream_topic(d, "manhole", code) for d in ("350206", "350203")}
        assert set(ops.topics()) == {downstream_topic("350206", "manhole", code, g) for g in ("public", "internal")}
        # An app cannot publish a forged view either.
        pub.c.publish(downstream_topic("350206", "manhole", code), b"forged", qos=1).wait_for_publish(10)
        # Acknowledged, so routed or refused before the gateway's next message, which ops receives after it.
        _sentinel(gw, downstream_topic("350206", "manhole", code), b"sentinel-2", ops)
        assert all(p != b"forged" for _, p in ops.messages)
    finally:
        for c in clients:
            c.close()
        proc.stop()


async def test_the_bridge_waits_for_acknowledgements_and_loses_nothing(
    kafka_bootstrap: str, mqtt_endpoint: MqttEndpoint, topics: KafkaTopics
) -> None:
    """Backpressure: at most ``bridge_max_inflight`` unacknowledged publishes, every record still delivered."""
    air = DeviceCode.build("350206", "0308", random.randint(1, 999_999)).full
    await create_topics(kafka_bootstrap, [topics.raw, topics.readings("air"), topics.alerts, topics.deadletter])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    metrics = GatewayMetrics(CollectorRegistry())
    gw = Gateway(_gateway_config(mqtt_endpoint, kafka_bootstrap, topics, ("air",), bridge_max_inflight=3), metrics)
    app = Recorder.at(mqtt_endpoint)
    down = downstream_topic("350206", "air", air)
    t0 = datetime.now(UTC).replace(microsecond=0)

    def record(i: int) -> bytes:
        ts = (t0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        doc = {
            "v": 1,
            "device": air,
            "district": "350206",
            "class": "air",
            "model": "air-station@1",
            "grid": None,
            "ts": ts,
            "rx": ts,
            "readings": [{"metric": "pm25", "value": float(i), "unit": "ug/m3", "quality": "good"}],
        }
        return json.dumps(doc).encode()

    try:
        app.subscribe(down)
        await gw.start()
        await gw.wait_connected(20)
        # The bridge starts at the latest offsets once it joined its group: send until it forwards.
        i = 0
        while not app.on(down):
            assert i < 60, "the bridge never forwarded"
            await producer.send_and_wait(topics.readings("air"), record(i), key=air.encode())
            i += 1
            await asyncio.sleep(0.5)
        first = i
        for j in range(first, first + 300):
            await producer.send(topics.readings("air"), record(j), key=air.encode())
        await producer.flush()
        want = {float(j) for j in range(first, first + 300)}
        # Waited for without blocking the event loop: the gateway's bridge runs on it.
        assert await await_for(lambda: want <= {d["readings"][0]["value"] for d in app.on(down)}, timeout=30)
        assert metrics.bridge_waits._value.get() > 0  # it did wait for room
        assert await await_for(lambda: metrics.bridge_inflight._value.get() == 0, timeout=10)
        assert metrics.bridge_written_off._value.get() == 0
    finally:
        app.close()
        await gw.stop()
        await producer.stop()
