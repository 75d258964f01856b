"""The one topic scheme for MQTT and Kafka (documented in docs/topics.md).

MQTT (device side and app side):

* ``citybrain/up/{code}/telemetry`` — device → platform readings (JSON, QoS 1).
* ``citybrain/up/{code}/event`` — device → platform events (alarms on change).
* ``citybrain/up/{code}/status`` — birth / last will (retained).
* ``citybrain/cmd/{code}`` — platform → device commands.
* ``citybrain/down/{district}/{class}/{code}`` — normalised readings for apps, public view.
* ``citybrain/down-internal/…``, ``citybrain/down-sensitive/…`` — the same, internal and
  sensitive views (data grades, docs/security.md); separate roots so that an ACL on
  ``citybrain/down/#`` never reaches a graded view.
* ``citybrain/alerts/{district}/{severity}`` — alerts for apps and consoles.

Kafka:

* ``citybrain.raw`` — batches of raw messages, partitioned by device code.
* ``citybrain.deadletter`` — rejected payloads with their reason and bytes.
* ``citybrain.readings.{class}`` — normalised readings per device class (full fidelity).
* ``citybrain.readings.{class}.public`` / ``.internal`` — masked views by data grade, for
  the classes that have graded metrics (:mod:`streams.downstream`).
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
    "DOWNSTREAM_GRADES",
    "UPLINK_KINDS",
    "KafkaTopics",
    "TopicError",
    "UplinkTopic",
    "alert_topic",
    "command_topic",
    "downstream_filter",
    "downstream_topic",
    "parse_uplink",
    "partition_for",
    "uplink_topic",
]

MQTT_ROOT = "citybrain"
UPLINK_KINDS = ("telemetry", "event", "status")
UplinkKind = Literal["telemetry", "event", "status"]
#: Data grades, lowest first, and the MQTT root of each grade's downstream view.
DOWNSTREAM_GRADES = ("public", "internal", "sensitive")
_DOWN_ROOTS = {"public": "down", "internal": "down-internal", "sensitive": "down-sensitive"}

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


def _down_root(grade: str) -> str:
    root = _DOWN_ROOTS.get(grade)
    if root is None:
        raise TopicError(f"unknown data grade {grade!r} (one of {', '.join(DOWNSTREAM_GRADES)})")
    return f"{MQTT_ROOT}/{root}"


def downstream_topic(district: str, device_class: str, code: str, grade: str = "public") -> str:
    """MQTT re-publish of normalised readings for apps, in the view of one data grade.

    ``public`` is ``citybrain/down/…`` (the historical topic); ``internal`` and
    ``sensitive`` have roots of their own (``citybrain/down-internal/…``,
    ``citybrain/down-sensitive/…``), so a grant on ``citybrain/down/#`` never
    covers them.
    """
    for seg in (district, device_class, code):
        if not _SEGMENT_RE.match(seg):
            raise TopicError(f"bad topic segment {seg!r}")
    return f"{_down_root(grade)}/{district}/{device_class}/{code}"


def downstream_filter(grade: str = "public", district: str = "+") -> str:
    """Subscription filter (and ACL pattern) for one grade's downstream readings, one or all (``+``) districts."""
    if district != "+" and not _SEGMENT_RE.match(district):
        raise TopicError(f"bad topic segment {district!r}")
    return f"{_down_root(grade)}/{district}/#"


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

    def readings_view(self, device_class: str, grade: str) -> str:
        """The Kafka topic of one grade's view of a class's readings.

        ``sensitive`` is the full topic (:meth:`readings`); ``public`` and
        ``internal`` are ``{prefix}.readings.{class}.{grade}``. Which classes
        have such a topic is decided by :func:`streams.downstream.plan_views`.
        """
        if grade == "sensitive":
            return self.readings(device_class)
        if grade not in _DOWN_ROOTS:
            raise TopicError(f"unknown data grade {grade!r} (one of {', '.join(DOWNSTREAM_GRADES)})")
        return f"{self.readings(device_class)}.{grade}"
