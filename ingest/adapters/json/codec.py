"""Canonical JSON over MQTT: the platform's own device payload (schema in docs/topics.md).

Telemetry payload, version 1::

    {"v": 1, "ts": <time>, "metrics": {"pm25": 35.2, "co": {"value": 1.1, "unit": "ppm"}}}

or several records at once::

    {"v": 1, "records": [{"ts": <time>, "metrics": {...}}, ...]}

``<time>`` is ISO 8601 with a zone, or epoch seconds (int or float), or epoch
milliseconds (int ≥ 10^11). A value without a unit is in the model's
canonical unit; ``Reading.unit`` is then ``""``.

This codec is pure: bytes in, readings out, :class:`DecodeError` on anything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from core.jsonio import loads
from core.records import Quality, Reading, RecordError
from ingest.adapters.hj212.codec import FLAG_QUALITY
from ingest.errors import DecodeError

__all__ = ["MAX_RECORDS", "decode", "encode", "load_json", "parse_time"]

MAX_RECORDS = 1000
MAX_METRICS = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch values at or above this are milliseconds (10^11 s is the year 5138).
_MS_THRESHOLD = 100_000_000_000


def parse_time(value: Any) -> datetime:
    """Event time from ISO 8601 (with zone), epoch seconds or epoch milliseconds, as UTC.

    Integer and float forms of the same instant give equal datetimes, so they
    share one dedup key.

    Raises:
        DecodeError: ``bad_time`` for anything else (naive ISO strings included:
            a zone-less time is ambiguous and is not guessed).
    """
    if isinstance(value, bool):
        raise DecodeError("bad_time", "boolean is not a time")
    if isinstance(value, int):
        us = value * 1000 if value >= _MS_THRESHOLD else value * 1_000_000
        return _from_us(us)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("bad_time", f"non-finite time {value}")
        try:
            us = round(value * 1000) if value >= _MS_THRESHOLD else round(value * 1_000_000)
        except OverflowError:
            # 1e306 is finite, but not once scaled to µs (found by `make fuzz`).
            raise DecodeError("bad_time", f"time out of range ({value!r})") from None
        return _from_us(us)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise DecodeError("bad_time", f"not ISO 8601: {value[:40]!r}") from None
        if dt.tzinfo is None:
            raise DecodeError("bad_time", f"ISO time without a zone: {value[:40]!r}")
        return dt.astimezone(UTC)
    raise DecodeError("bad_time", f"unsupported time type {type(value).__name__}")


def _from_us(us: int) -> datetime:
    try:
        return _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise DecodeError("bad_time", f"time out of range ({us} µs)") from None


def _metric_value(name: str, raw: Any) -> tuple[float, str, str | None]:
    unit = ""
    flag: str | None = None
    if isinstance(raw, Mapping):
        unit_raw = raw.get("unit", "")
        if not isinstance(unit_raw, str):
            raise DecodeError("bad_schema", f"unit of {name} must be a string")
        unit = unit_raw
        flag_raw = raw.get("flag")
        if flag_raw is not None and not isinstance(flag_raw, str):
            raise DecodeError("bad_schema", f"flag of {name} must be a string")
        flag = flag_raw
        raw = raw.get("value")
    if isinstance(raw, bool):
        return (1.0 if raw else 0.0), unit, flag
    if not isinstance(raw, int | float):
        raise DecodeError("bad_value", f"{name} is not a number")
    value = float(raw)
    if not math.isfinite(value):
        raise DecodeError("bad_value", f"{name} is not finite")
    return value, unit, flag


def load_json(data: bytes) -> Any:
    """Parse untrusted JSON bytes (a device payload, a platform's push).

    Raises:
        DecodeError: ``bad_json``, also for nesting too deep to parse.
    """
    try:
        # orjson first (a fifth of the cost); what it refuses (NaN literals, nesting past its
        # limit, integers beyond 64 bits, bad UTF-8) goes to the standard parser, which
        # decides as it always has: NaN is a bad_value, deep nesting a bad_json.
        return loads(data)
    except ValueError:
        pass
    try:
        return json.loads(data)
    except RecursionError:
        # Deep nesting fits in a small payload; it must be a reject, not a worker crash.
        raise DecodeError("bad_json", "nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError("bad_json", str(exc)[:120]) from None


def decode(payload: bytes, *, device_code: str, received_at: datetime) -> list[Reading]:
    """Decode one telemetry payload into readings (units as sent).

    Quality is ``good`` unless a metric carries a data flag: JSON payloads use
    HJ 212's flags (N, F, M, S, D, C, T, B), mapped the same way, and an
    unknown flag is ``suspect`` (a doubtful value is kept, never guessed good).

    Raises:
        DecodeError: ``bad_json``, ``bad_schema``, ``bad_time`` or ``bad_value``.
    """
    doc = load_json(payload)
    if not isinstance(doc, dict):
        raise DecodeError("bad_schema", "payload must be a JSON object")
    version = doc.get("v", 1)
    if version != 1:
        raise DecodeError("bad_schema", f"unsupported payload version {version!r}")
    records: Any
    if "records" in doc:
        records = doc["records"]
        if not isinstance(records, list) or not records:
            raise DecodeError("bad_schema", "records must be a non-empty list")
        if len(records) > MAX_RECORDS:
            raise DecodeError("bad_schema", f"more than {MAX_RECORDS} records")
    else:
        records = [doc]
    out: list[Reading] = []
    for rec in records:
        if not isinstance(rec, dict):
            raise DecodeError("bad_schema", "each record must be an object")
        if "ts" not in rec:
            raise DecodeError("bad_schema", "missing ts")
        event_time = parse_time(rec["ts"])
        metrics = rec.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise DecodeError("bad_schema", "metrics must be a non-empty object")
        if len(metrics) > MAX_METRICS:
            raise DecodeError("bad_schema", f"more than {MAX_METRICS} metrics")
        for name, raw in metrics.items():
            value, unit, flag = _metric_value(name, raw)
            try:
                quality = Quality.GOOD if flag is None else FLAG_QUALITY.get(flag, Quality.SUSPECT)
                out.append(Reading(device_code, name, event_time, received_at, value, unit, quality, flag))
            except RecordError as exc:
                raise DecodeError("bad_schema", str(exc)) from None
    return out


def encode(event_time: datetime, metrics: Mapping[str, float | tuple[float, str]], *, ts_format: str = "iso") -> bytes:
    """Encode one telemetry record (used by simulators and tests).

    Args:
        event_time: Aware datetime.
        metrics: name → value, or name → (value, unit).
        ts_format: ``iso``, ``s`` (epoch seconds, float) or ``ms`` (epoch milliseconds, int).
    """
    ts: Any
    if ts_format == "iso":
        ts = event_time.isoformat()
    elif ts_format == "s":
        ts = event_time.timestamp()
    elif ts_format == "ms":
        ts = round(event_time.timestamp() * 1000)
    else:
        raise ValueError(f"unknown ts_format {ts_format!r}")
    body: dict[str, Any] = {}
    for name, val in metrics.items():
        if isinstance(val, tuple):
            body[name] = {"value": val[0], "unit": val[1]}
        else:
            body[name] = val
    return json.dumps({"v": 1, "ts": ts, "metrics": body}, separators=(",", ":")).encode()
