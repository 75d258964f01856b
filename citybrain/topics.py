"""The one topic scheme for MQTT and Kafka (documented in docs/topics.md).

MQTT (device side and app side):

* ``citybrain/up/{code}/telemetry`` — device → platform readings (JSON, QoS 1).
* ``citybrain/up/{code}/event`` — device → platform events (alarms on change).
* ``citybrain/up/{code}/status`` — birth / last will (retained).
* ``citybrain/cmd/{code}`` — platform → device commands.
* ``citybrain/down/{district}/{class}/{code}`` — normalised readings for apps.
* ``citybrain/alerts/{district}/{severity}`` — alerts for apps and consoles.

Kafka:

* ``citybrain.raw`` — batches of raw messages, partitioned by device code.
* ``citybrain.deadletter`` — rejected payloads with their reason and bytes.
* ``citybrain.readings.{class}`` — normalised readings per device class.
* ``citybrain.alerts`` — alert transitions.

Payloads carry ``"v": 1``; a breaking change adds a new version, never edits one.
This module is a leaf: pure functions, no I/O.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "UPLINK_KINDS",
    "KafkaTopics",
    "TopicError",
    "UplinkTopic",
    "alert_topic",
    "command_topic",
    "downstream_topic",
    "parse_uplink",
    "partition_for",
    "uplink_topic",
]

MQTT_ROOT = "citybrain"
UPLINK_KINDS = ("telemetry", "event", "status")
UplinkKind = Literal["telemetry", "event", "status"]

_SEGMENT_RE = re.compile(r"^[0-9A-Za-z_-]{1,32}$")


class TopicError(ValueError):
    """A topic does not follow the scheme."""


@dataclass(frozen=True, slots=True)
class UplinkTopic:
    """A parsed device uplink topic."""

    device_code: str
    kind: UplinkKind

    def __post_init__(self) -> None:
        if not _SEGMENT_RE.match(self.device_code):
            raise TopicError(f"bad device segment {self.device_code!r}")
        if self.kind not in UPLINK_KINDS:
            raise TopicError(f"unknown uplink kind {self.kind!r}")

    def __str__(self) -> str:
        return f"{MQTT_ROOT}/up/{self.device_code}/{self.kind}"


def uplink_topic(code: str, kind: UplinkKind = "telemetry") -> str:
    """The MQTT topic a device publishes on."""
    return str(UplinkTopic(code, kind))


def uplink_filter(kind: str = "+") -> str:
    """Subscription filter for all devices' uplinks of one kind (or all, ``+``)."""
    return f"{MQTT_ROOT}/up/+/{kind}"


def parse_uplink(topic: str) -> UplinkTopic:
    """Parse ``citybrain/up/{code}/{kind}``.

    Raises:
        TopicError: the topic is not an uplink topic of the scheme.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != MQTT_ROOT or parts[1] != "up":
        raise TopicError(f"not an uplink topic: {topic!r}")
    kind = parts[3]
    if kind not in UPLINK_KINDS:
        raise TopicError(f"unknown uplink kind {kind!r} in {topic!r}")
    return UplinkTopic(parts[2], kind)  # type: ignore[arg-type]


def command_topic(code: str) -> str:
    """The MQTT topic a device subscribes to for commands."""
    if not _SEGMENT_RE.match(code):
        raise TopicError(f"bad device segment {code!r}")
    return f"{MQTT_ROOT}/cmd/{code}"


def downstream_topic(district: str, device_class: str, code: str) -> str:
    """MQTT re-publish of normalised readings for apps."""
    for seg in (district, device_class, code):
        if not _SEGMENT_RE.match(seg):
            raise TopicError(f"bad topic segment {seg!r}")
    return f"{MQTT_ROOT}/down/{district}/{device_class}/{code}"


def alert_topic(district: str, severity: str) -> str:
    """MQTT topic of alerts for one district and severity."""
    for seg in (district, severity):
        if not _SEGMENT_RE.match(seg):
            raise TopicError(f"bad topic segment {seg!r}")
    return f"{MQTT_ROOT}/alerts/{district}/{severity}"


def partition_for(device_code: str, partitions: int) -> int:
    """Stable partition of a device: all of one device's messages keep their order.

    CRC32 rather than Python's ``hash`` so that every process, in every language,
    agrees on the partition.
    """
    if partitions < 1:
        raise TopicError("partitions must be >= 1")
    return zlib.crc32(device_code.encode()) % partitions


@dataclass(frozen=True, slots=True)
class KafkaTopics:
    """Kafka topic names, with an optional prefix so tests can isolate themselves."""

    prefix: str = "citybrain"

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9._-]{1,100}$", self.prefix):
            raise TopicError(f"bad Kafka topic prefix {self.prefix!r}")

    @property
    def raw(self) -> str:
        return f"{self.prefix}.raw"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts"

    def readings(self, device_class: str) -> str:
        if not _SEGMENT_RE.match(device_class):
            raise TopicError(f"bad device class {device_class!r}")
        return f"{self.prefix}.readings.{device_class}"
