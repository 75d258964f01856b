"""Canonical records shared by every package.

These are the platform's contracts: what the gateway hands to Kafka
(:class:`RawMessage`), what normalisation produces (:class:`Reading`) and what
the rule engine raises (:class:`Alert`). They are frozen, slotted dataclasses
that validate themselves in ``__post_init__``, so a half-valid record cannot
exist anywhere downstream.

This module is a leaf: it imports nothing from the project, so that every
package (ingest, streams, alerts, simulators) can depend on it.

Times are timezone-aware UTC :class:`datetime.datetime` values. Two readings
whose timestamps arrived as ``1700000000`` and ``1700000000.0`` compare equal,
which is what makes the store's dedup key (device, metric, event time) hold.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "METRIC_NAME_PATTERN",
    "METRIC_NAME_RE",
    "REPORTED_METRIC_RE",
    "Alert",
    "AlertState",
    "Quality",
    "RawMessage",
    "Reading",
    "RecordError",
    "Severity",
    "Transport",
]

SCHEMA_VERSION = 1

#: A canonical metric name, the one syntax of thing models, rules, the API and the readings
#: tables' columns (40 characters leave room for column suffixes within PostgreSQL's 63).
METRIC_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,40}$"
METRIC_NAME_RE = re.compile(METRIC_NAME_PATTERN)
#: What a device may call a metric in a payload: a codec's reading carries it as reported,
#: and normalisation either maps it to a canonical name or rejects it as ``unknown_metric``.
REPORTED_METRIC_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
_CODE_RE = re.compile(r"^[0-9A-Za-z_-]{1,32}$")


class RecordError(ValueError):
    """A canonical record was built from invalid fields."""


class Quality(enum.StrEnum):
    """Quality flag carried by every reading.

    ``bad`` readings are stored but never reach the rules.
    """

    GOOD = "good"
    SUSPECT = "suspect"
    BAD = "bad"


class Transport(enum.StrEnum):
    """How a raw message reached the platform."""

    MQTT = "mqtt"
    HJ212 = "hj212"
    WEBHOOK = "webhook"


class Severity(enum.IntEnum):
    """Alert severity; larger is worse, so ``max`` picks the escalation."""

    INFO = 1
    WARNING = 2
    MAJOR = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise RecordError(f"unknown severity {text!r}") from None


class AlertState(enum.StrEnum):
    """Lifecycle state of an alert."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


def _require_utc(name: str, value: datetime) -> None:
    # The common case first: an aware datetime on the UTC singleton, as every codec makes
    # them (this check runs for each reading; the full one below was ~1 µs of it).
    if type(value) is datetime and value.tzinfo is UTC:
        return
    if not isinstance(value, datetime):
        raise RecordError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise RecordError(f"{name} must be timezone-aware")
    if value.utcoffset() != UTC.utcoffset(None):
        raise RecordError(f"{name} must be in UTC")


def utc_from_epoch_us(us: int) -> datetime:
    """Build an aware UTC datetime from integer epoch microseconds."""
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(value: datetime) -> int:
    """Integer epoch microseconds of an aware datetime (exact, no float rounding)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as it arrived, before any decoding.

    Attributes:
        topic: MQTT topic, or a synthetic address for other transports
            (``hj212/{peer}``, ``webhook/{platform}``).
        payload: The original bytes, never altered, so a dead-letter keeps them.
        received_at: When the platform received it (UTC).
        transport: The transport it came over.
        device_code: The device the transport vouches for, if known at ingest.
        meta: Transport metadata (client id, QoS, peer address …), small strings only.
    """

    topic: str
    payload: bytes
    received_at: datetime
    transport: Transport = Transport.MQTT
    device_code: str | None = None
    meta: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.topic or len(self.topic) > 512:
            raise RecordError("topic must be 1..512 characters")
        if not isinstance(self.payload, bytes):
            raise RecordError("payload must be bytes")
        _require_utc("received_at", self.received_at)
        if self.device_code is not None and not _CODE_RE.match(self.device_code):
            raise RecordError(f"device_code {self.device_code!r} is not a plausible code")

    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one metric of one device at one event time.

    The identity of a reading is :attr:`key`: (device, metric, event time).
    The store keeps one row per key, so replays and duplicate sends are harmless.
    """

    device_code: str
    metric: str
    event_time: datetime
    received_at: datetime
    value: float
    unit: str
    quality: Quality = Quality.GOOD
    flag: str | None = None

    def __post_init__(self) -> None:
        if not _CODE_RE.match(self.device_code):
            raise RecordError(f"device_code {self.device_code!r} is not a plausible code")
        if not REPORTED_METRIC_RE.match(self.metric):
            raise RecordError(f"metric {self.metric!r} is not a valid metric name")
        _require_utc("event_time", self.event_time)
        _require_utc("received_at", self.received_at)
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise RecordError(f"value of {self.metric} must be a number")
        if not math.isfinite(self.value):
            raise RecordError(f"value of {self.metric} must be finite")
        if not isinstance(self.quality, Quality):
            raise RecordError("quality must be a Quality")

    @property
    def key(self) -> tuple[str, str, int]:
        """Dedup key: (device, metric, event time in integer microseconds)."""
        return (self.device_code, self.metric, epoch_us(self.event_time))

    def to_json(self, *, district: str | None = None, device_class: str | None = None) -> dict[str, Any]:
        """The versioned downstream payload (schema ``citybrain.reading``)."""
        out: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "device": self.device_code,
            "metric": self.metric,
            "ts": self.event_time.isoformat().replace("+00:00", "Z"),
            "rx": self.received_at.isoformat().replace("+00:00", "Z"),
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality.value,
        }
        if self.flag is not None:
            out["flag"] = self.flag
        if district is not None:
            out["district"] = district
        if device_class is not None:
            out["class"] = device_class
        return out


def alert_id(device_code: str, rule: str, opened_at: datetime) -> str:
    """Deterministic alert id, so a replayed evaluation upserts the same alert."""
    raw = f"{device_code}|{rule}|{epoch_us(opened_at)}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Alert:
    """An early warning raised by a rule or a detector.

    Attributes:
        id: Deterministic from (device, rule, opened_at); see :func:`alert_id`.
        rule: The rule or detector id.
        device_code: The device the alert is about.
        district: GB/T 2260 district code, for routing and scoping.
        severity: Current severity.
        state: Lifecycle state.
        opened_at: Event time of the reading that opened it.
        metric: The metric that triggered it, if any.
        value: The triggering value.
        threshold: The threshold crossed, if any.
        message: Human-readable summary.
        cleared_at: Event time at which the condition cleared, if it has.
    """

    id: str
    rule: str
    device_code: str
    district: str
    severity: Severity
    state: AlertState
    opened_at: datetime
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    cleared_at: datetime | None = None
    device_class: str | None = None
    labels: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.id or not self.rule:
            raise RecordError("alert needs an id and a rule")
        if not _CODE_RE.match(self.device_code):
            raise RecordError(f"device_code {self.device_code!r} is not a plausible code")
        if not isinstance(self.severity, Severity):
            raise RecordError("severity must be a Severity")
        if not isinstance(self.state, AlertState):
            raise RecordError("state must be an AlertState")
        _require_utc("opened_at", self.opened_at)
        if self.cleared_at is not None:
            _require_utc("cleared_at", self.cleared_at)
        if self.value is not None and not math.isfinite(self.value):
            raise RecordError("alert value must be finite")

    def to_json(self) -> dict[str, Any]:
        """The versioned downstream payload (schema ``citybrain.alert``)."""
        return {
            "v": SCHEMA_VERSION,
            "id": self.id,
            "rule": self.rule,
            "device": self.device_code,
            "district": self.district,
            "class": self.device_class,
            "severity": self.severity.label,
            "state": self.state.value,
            "opened_at": self.opened_at.isoformat().replace("+00:00", "Z"),
            "cleared_at": self.cleared_at.isoformat().replace("+00:00", "Z") if self.cleared_at else None,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "labels": dict(self.labels),
        }
