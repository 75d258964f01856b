"""Set-up shared by the benchmarks that run the platform (not a benchmark itself)."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from citybrain.harness import ManagedProcess, start_mosquitto

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
