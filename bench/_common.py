"""Set-up shared by the benchmarks that run the platform (not a benchmark itself)."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from citybrain.harness import ManagedProcess, MqttEndpoint, pg_base_dir, start_mosquitto

if TYPE_CHECKING:
    from citybrain.settings import Settings


def mqtt_broker_url(root: Path, extra: list[ManagedProcess]) -> str | None:
    """The MQTT broker to run against: ``CITYBRAIN_MQTT_URL``; else, when installed, a private
    Mosquitto under ``root`` (the production broker; its process is appended to ``extra`` for
    the caller to stop); else None (the embedded broker)."""
    mqtt_url = os.environ.get("CITYBRAIN_MQTT_URL")
    if mqtt_url is None and (shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")):
        proc, ep = start_mosquitto(root / "mosquitto")
        extra.append(proc)
        mqtt_url = ep.url
    return mqtt_url


def telemetry_messages(codes: list[str], base: datetime, steps: int) -> list[tuple[str, bytes]]:
    """``steps`` air readings per device, one second of event time apart from ``base``: (topic, payload)."""
    from ingest.adapters.json.codec import encode

    out = []
    for i in range(steps):
        t = base + timedelta(seconds=i)
        for code in codes:
            metrics = {"pm25": 20.0 + i % 7, "pm10": 40.0, "no2": 30.0, "co": 0.6, "o3": 60.0, "so2": 8.0}
            out.append((f"citybrain/up/{code}/telemetry", encode(t, metrics)))
    return out


def platform_settings(data_dir: Path, topic_prefix: str, mqtt_url: str | None) -> Settings:
    """Settings of a benchmarked platform: 4 partitions, quiet logs, no flood limit, no MQTT re-publishing."""
    from citybrain.settings import Settings

    return Settings(
        data_dir=data_dir,
        topic_prefix=topic_prefix,
        api_port=0,
        partitions=4,
        log_level="WARNING",
        # Few device codes carry the whole load, each far above its model cadence:
        # the gateway's per-device flood limit would drop most of it.
        gateway_flood_factor=0,
        # As at city scale (docs/scaling-plan.md): readings reach apps from Kafka, not
        # re-published on MQTT, which would double the gateway's and the broker's work.
        gateway_bridge_readings=False,
        mqtt_url=mqtt_url,
    )


def mqtt_client(ep: MqttEndpoint, **kw: Any) -> mqtt.Client:
    """A connected paho client with its network loop running (1000 in flight, unbounded queue)."""
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
        **kw,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(ep.host, ep.port, keepalive=60)
    c.loop_start()
    return c


def publish_qos1(ep: MqttEndpoint, topics_payloads: list[tuple[str, bytes]], connections: int = 4) -> float:
    """Publish at QoS 1 over several connections; returns seconds until all PUBACKs."""
    chunks = [topics_payloads[i::connections] for i in range(connections)]
    clients = [mqtt_client(ep) for _ in range(connections)]
    t0 = time.perf_counter()

    def run(c: mqtt.Client, items: list[tuple[str, bytes]]) -> None:
        infos = [c.publish(t, p, qos=1) for t, p in items]
        for i in infos:
            i.wait_for_publish(120)

    threads = [threading.Thread(target=run, args=(c, ch)) for c, ch in zip(clients, chunks, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    for c in clients:
        c.loop_stop()
        c.disconnect()
    return dt


def drop_pg(name: str) -> None:
    """Remove a stopped embedded PostgreSQL's data dir and log (a 1M-device ledger is ~1.7 GB)."""
    shutil.rmtree(pg_base_dir() / name, ignore_errors=True)
    (pg_base_dir() / f"{name}.log").unlink(missing_ok=True)
