"""Normalisation: raw messages → canonical rows and readings. Pure, no I/O.

For each raw message: find the device in the ledger index (unknown, suspended
and decommissioned devices are rejected with a reason), decode the payload
with the adapter the device's model names, convert every value to the
model's canonical unit (an unknown unit rejects that value with a reason,
never a guess), flag quality (``suspect`` when outside the model's physical
range, or an HJ 212 flag other than N; ``bad`` for fault flags), and flag
readings too far in the future (clock skew).

The output is grouped per device class as wide rows (one row per device and
event time, one column per metric), which is what the store writes with COPY.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from citybrain.records import Quality, RawMessage, Reading, RecordError, Transport, epoch_us
from citybrain.topics import TopicError, parse_uplink
from devices.errors import UnitError
from devices.ledger import ACCEPTING, DeviceIndex, DeviceInfo
from devices.models import DeviceModel, ModelError, ModelRegistry
from ingest.adapters.json import codec as json_codec
from ingest.errors import DecodeError

__all__ = ["Normalised", "Reject", "Row", "normalise"]

log = logging.getLogger(__name__)

_QRANK = {Quality.GOOD: 0, Quality.SUSPECT: 1, Quality.BAD: 2}

Decoder = Callable[[RawMessage, DeviceInfo, DeviceModel], list[Reading]]


@dataclass(frozen=True, slots=True)
class Reject:
    """A message (or value) that could not become a reading, with its reason."""

    raw: RawMessage
    reason: str
    detail: str


@dataclass(slots=True)
class Row:
    """One wide row: all metrics of one device at one event time."""

    device_code: str
    event_time: datetime
    received_at: datetime
    values: dict[str, float] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    quality: int = 0


@dataclass(slots=True)
class Normalised:
    """The result of normalising one batch."""

    rows: dict[str, dict[tuple[str, int], Row]] = field(default_factory=dict)
    readings: list[tuple[Reading, DeviceInfo]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    seen: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    skewed: list[Reading] = field(default_factory=list)
    first_seen: set[str] = field(default_factory=set)
    status: list[tuple[RawMessage, DeviceInfo]] = field(default_factory=list)

    def row_count(self) -> int:
        return sum(len(v) for v in self.rows.values())


def _decode_json(raw: RawMessage, dev: DeviceInfo, model: DeviceModel) -> list[Reading]:
    return json_codec.decode(raw.payload, device_code=dev.code, received_at=raw.received_at)


def _decoders() -> dict[str, Decoder]:
    # Imported here, not at module top: the adapters import records this module also uses.
    from ingest.adapters.hj212.decoder import decode_hj212
    from ingest.adapters.manhole.decoder import decode_manhole

    return {"json": _decode_json, "hj212": decode_hj212, "manhole-tlv": decode_manhole}


DECODERS: dict[str, Decoder] = _decoders()


def register_decoder(name: str, decoder: Decoder) -> None:
    """Register the decoder of an adapter; refuses duplicates."""
    if name in DECODERS:
        raise ValueError(f"decoder {name!r} already registered")
    DECODERS[name] = decoder


def _decoder_for(raw: RawMessage, model: DeviceModel) -> Decoder:
    # The transport decides first: MQTT uplinks are canonical JSON whatever the
    # model's field protocol (an HJ 212 station may be bridged over MQTT), and
    # frames from the HJ 212 server are HJ 212 whatever the model says.
    if raw.topic.startswith("citybrain/up/"):
        return DECODERS["json"]
    if raw.transport is Transport.HJ212:
        return DECODERS["hj212"]
    try:
        return DECODERS[model.adapter]
    except KeyError:
        raise DecodeError("no_decoder", f"no decoder for adapter {model.adapter!r}") from None


def normalise(
    batch: list[RawMessage],
    index: DeviceIndex,
    models: ModelRegistry,
    *,
    now: datetime,
    max_future_skew: timedelta,
) -> Normalised:
    """Normalise one batch of raw messages (see module docstring)."""
    out = Normalised()
    horizon = now + max_future_skew
    for raw in batch:
        code = raw.device_code
        kind = "telemetry"
        if raw.topic.startswith("citybrain/up/"):
            try:
                up = parse_uplink(raw.topic)
            except TopicError as exc:
                out.rejects.append(Reject(raw, "bad_topic", str(exc)))
                continue
            code, kind = up.device_code, up.kind
        if code is None:
            out.rejects.append(Reject(raw, "no_device", "the transport did not name a device"))
            continue
        dev = index.get(code)
        if dev is None:
            out.rejects.append(Reject(raw, "unknown_device", f"{code} is not in the ledger"))
            continue
        if dev.state not in ACCEPTING:
            out.rejects.append(Reject(raw, f"device_{dev.state}", f"{code} is {dev.state}"))
            continue
        if kind == "status":
            out.status.append((raw, dev))
            continue
        if kind == "event" and raw.payload.startswith(b'{"v":1,"ack"'):
            out.status.append((raw, dev))  # a command acknowledgement, handled by the command dispatcher
            continue
        try:
            model = models.get(dev.model)
        except ModelError as exc:
            out.rejects.append(Reject(raw, "unknown_model", str(exc)))
            continue
        try:
            readings = _decoder_for(raw, model)(raw, dev, model)
        except DecodeError as exc:
            out.rejects.append(Reject(raw, exc.reason, exc.detail))
            continue
        rows = out.rows.setdefault(dev.device_class, {})
        accepted = False
        for r in readings:
            metric = model.metrics.get(r.metric)
            if metric is None:
                out.rejects.append(Reject(raw, "unknown_metric", f"{r.metric} is not in model {model.key}"))
                continue
            try:
                conv = metric.convert_from(r.unit or None)
            except UnitError as exc:
                out.rejects.append(Reject(raw, "bad_unit", str(exc)))
                continue
            value = conv.apply(r.value)
            quality = r.quality
            if quality is Quality.GOOD and not metric.in_range(value):
                quality = Quality.SUSPECT
            if r.event_time > horizon:
                quality = Quality.BAD if quality is Quality.BAD else Quality.SUSPECT
            try:
                norm = Reading(
                    r.device_code, r.metric, r.event_time, r.received_at, value, metric.unit, quality, r.flag
                )
            except RecordError as exc:
                out.rejects.append(Reject(raw, "bad_value", str(exc)))
                continue
            if r.event_time > horizon:
                out.skewed.append(norm)
            key = (dev.code, epoch_us(r.event_time))
            row = rows.get(key)
            if row is None:
                row = rows[key] = Row(dev.code, r.event_time, r.received_at)
            row.values[r.metric] = value
            if quality is not Quality.GOOD:
                row.flags[r.metric] = quality.value if r.flag is None else f"{quality.value}:{r.flag}"
            row.quality = max(row.quality, _QRANK[quality])
            out.readings.append((norm, dev))
            accepted = True
            prev = out.seen.get(dev.code)
            if prev is None or r.event_time > prev[1]:
                out.seen[dev.code] = (r.received_at, r.event_time)
        if accepted and dev.state == "registered":
            out.first_seen.add(dev.code)
    return out


def group_by_device(readings: list[tuple[Reading, DeviceInfo]]) -> Mapping[str, list[Reading]]:
    """Readings per device, in arrival order (rule evaluation is per device, in order)."""
    out: dict[str, list[Reading]] = {}
    for r, _dev in readings:
        out.setdefault(r.device_code, []).append(r)
    return out
