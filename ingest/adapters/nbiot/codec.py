"""NB-IoT operator platform push (HTTP webhook body): the pure codec.

NB-IoT devices talk CoAP/LwM2M to an operator platform, which pushes their
data to the application over HTTP (docs/standards.md §6.2). Two push styles
are understood:

* ``oceanconnect`` (Huawei OceanConnect / IoTDA): ``notifyType`` ``deviceDataChanged``
  with one ``service``, or ``deviceDatasChanged`` with ``services``; ``service.data``
  holds the device's fields and ``eventTime`` is ``yyyyMMdd'T'HHmmss'Z'`` (UTC).
* ``ctwing`` (China Telecom AEP): ``messageType`` ``dataReport`` with ``payload``
  and ``timestamp`` (epoch ms).

The service data is either JSON metrics (``{"tilt": 3.5, "battery": 90}``), turned
into canonical telemetry JSON (:mod:`ingest.adapters.json`), or a binary device
frame (the manhole TLV frame, :mod:`ingest.adapters.manhole`) under ``rawData``,
``APPdata``, ``frame`` or ``payload`` as hex or base64, passed on as its bytes.
Other notification types (device added, online/offline …) carry no data:
:func:`decode` returns ``None`` for them.

This codec is pure: body bytes in, :class:`Push` out, :class:`~ingest.errors.DecodeError`
(reasons ``bad_json``, ``bad_body``, ``bad_frame_encoding``) on anything else.
Which device a platform's ``deviceId`` is (a ledger lookup) and the HTTP
exchange are the API route's business (``citybrain/routes/webhook.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.records import RawMessage, Transport
from ingest.adapters.json.codec import load_json
from ingest.errors import DecodeError

__all__ = ["PLATFORMS", "Push", "PushMessage", "decode", "raw_messages", "topic"]

PLATFORMS = ("oceanconnect", "ctwing")
_BINARY_KEYS = ("rawData", "APPdata", "frame", "payload")
_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
_OC_TIME = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True, slots=True)
class PushMessage:
    """One service's data of a push, as the payload a device would have sent.

    Attributes:
        service_id: The platform's service id (may be empty).
        payload: Canonical telemetry JSON, or the device's binary frame.
        format: ``json`` or ``binary``.
    """

    service_id: str
    payload: bytes
    format: str


@dataclass(frozen=True, slots=True)
class Push:
    """A data push: the platform's device id and one message per service."""

    device_id: str
    messages: tuple[PushMessage, ...]


@dataclass(frozen=True, slots=True)
class _Service:
    service_id: str
    data: Any
    event_time: datetime | None


def topic(platform: str) -> str:
    """The pseudo-topic raw messages and dead letters of a platform carry (``webhook/<platform>``)."""
    return f"webhook/{platform}"


def decode(platform: str, body: bytes, received_at: datetime) -> Push | None:
    """Decode a push body.

    Args:
        platform: One of :data:`PLATFORMS`.
        body: The HTTP body.
        received_at: When it arrived (the event time of JSON metrics without one).

    Returns:
        The push, or ``None`` for a notification that carries no data (acknowledge it).

    Raises:
        DecodeError: ``bad_json``, ``bad_body`` or ``bad_frame_encoding``.
        ValueError: ``platform`` is not one of :data:`PLATFORMS` (a caller bug).
    """
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform[:40]!r}")
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise DecodeError("bad_json", "body is not a JSON object")
    found = _services(platform, doc)
    if found is None:
        return None
    device_id, services = found
    messages = []
    for service in services:
        payload, fmt = _payload(service, received_at)
        messages.append(PushMessage(service.service_id, payload, fmt))
    return Push(device_id, tuple(messages))


def raw_messages(push: Push, platform: str, device_code: str, received_at: datetime) -> list[RawMessage]:
    """The raw messages of a push whose device is ``device_code``, for ``citybrain.raw``."""
    out = []
    for m in push.messages:
        meta = [("device_id", _meta_value(push.device_id)), ("format", m.format)]
        if m.service_id:
            meta.append(("service", _meta_value(m.service_id)))
        out.append(RawMessage(topic(platform), m.payload, received_at, Transport.WEBHOOK, device_code, tuple(meta)))
    return out


def _oc_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, _OC_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise DecodeError("bad_body", f"eventTime {text[:40]!r} is not yyyyMMddTHHmmssZ") from None


def _services(platform: str, doc: dict[str, Any]) -> tuple[str, list[_Service]] | None:
    """The data-carrying services of a push, or ``None`` for a notification to ignore."""
    device_id = doc.get("deviceId")
    if platform == "oceanconnect":
        kind = doc.get("notifyType")
        items: Any
        if kind == "deviceDataChanged":
            items = [doc.get("service")]
        elif kind == "deviceDatasChanged":
            items = doc.get("services")
            if not isinstance(items, list):
                raise DecodeError("bad_body", "deviceDatasChanged without a services list")
        else:
            return None
        out = []
        for item in items:
            if not isinstance(item, dict) or "data" not in item:
                raise DecodeError("bad_body", "service without data")
            out.append(_Service(str(item.get("serviceId", "")), item["data"], _oc_time(item.get("eventTime"))))
    else:
        if doc.get("messageType") != "dataReport":
            return None
        ts = doc.get("timestamp")
        when = None
        if isinstance(ts, int) and not isinstance(ts, bool) and 0 < ts < 10**14:
            when = datetime.fromtimestamp(ts / 1000, tz=UTC)
        out = [_Service(str(doc.get("serviceId", "")), doc.get("payload"), when)]
    if not isinstance(device_id, str) or not device_id or len(device_id) > 64:
        raise DecodeError("bad_body", "deviceId missing or not a string of 1..64 characters")
    if "\x00" in device_id:
        # PostgreSQL text cannot hold NUL: refused before the ledger lookup, and dead-lettered.
        raise DecodeError("bad_body", "deviceId contains a NUL character")
    return device_id, out


def _binary(value: str) -> bytes:
    try:
        if _HEX_RE.match(value):
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise DecodeError("bad_frame_encoding", "binary data is neither hex nor base64") from exc


def _payload(service: _Service, received_at: datetime) -> tuple[bytes, str]:
    """(payload bytes, format) of one service's data."""
    data = service.data
    if not isinstance(data, dict):
        raise DecodeError("bad_body", "service data is not an object")
    for key in _BINARY_KEYS:
        value = data.get(key)
        if isinstance(value, str):
            return _binary(value), "binary"
    # Keep what canonical telemetry accepts (numbers, booleans, {"value","unit"});
    # platform bookkeeping fields (strings) are not measurements.
    metrics = {
        k: v
        for k, v in data.items()
        if isinstance(v, int | float) or (isinstance(v, dict) and set(v) <= {"value", "unit"} and "value" in v)
    }
    if not metrics:
        raise DecodeError("bad_body", "service data has neither metrics nor a binary frame")
    ts = (service.event_time or received_at).isoformat()
    return json.dumps({"v": 1, "ts": ts, "metrics": metrics}, separators=(",", ":")).encode(), "json"


def _meta_value(text: str) -> str:
    return re.sub(r"[\r\n=]", "_", text)[:64]
