"""Drive simulated devices over MQTT with paho, as field devices would.

Each device publishes canonical JSON telemetry on
``citybrain/up/{code}/telemetry`` at QoS 1, with a birth message on
``status`` and a last will. Many virtual devices share a few connections
(a realistic gateway model); the platform identifies devices by topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from core.topics import uplink_topic
from ingest.adapters.json.codec import encode
from simulators.air import AirStation

__all__ = ["SimulatorError", "run_fleet"]

log = logging.getLogger(__name__)


class SimulatorError(Exception):
    """The simulator could not connect or publish."""


def _connect(host: str, port: int, username: str | None, password: str | None) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"citybrain-sim-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    if username:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(1000)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise SimulatorError(f"cannot connect to MQTT at {host}:{port}: {exc}") from exc
    client.loop_start()
    return client


def run_fleet(
    stations: Sequence[AirStation],
    *,
    host: str,
    port: int,
    interval_s: float,
    stop: threading.Event,
    duration_s: float | None = None,
    username: str | None = None,
    password: str | None = None,
) -> int:
    """Publish until ``stop`` is set (or ``duration_s`` passes); returns messages sent."""
    client = _connect(host, port, username, password)
    sent = 0
    started = time.monotonic()
    try:
        for st in stations:
            client.publish(uplink_topic(st.code, "status"), json.dumps({"v": 1, "state": "online"}), qos=1, retain=True)
        while not stop.is_set():
            tick = time.monotonic()
            now = datetime.now(UTC).replace(microsecond=0)
            for st in stations:
                client.publish(uplink_topic(st.code), encode(now, st.sample(now)), qos=1)
                sent += 1
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            stop.wait(max(0.0, interval_s - (time.monotonic() - tick)))
        for st in stations:
            client.publish(
                uplink_topic(st.code, "status"), json.dumps({"v": 1, "state": "offline"}), qos=1, retain=True
            )
    finally:
        client.loop_stop()
        client.disconnect()
    return sent
