from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.records import (
    Alert,
    AlertState,
    Quality,
    RawMessage,
    Reading,
    RecordError,
    Severity,
    alert_id,
    epoch_us,
    utc_from_epoch_us,
)

T = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
CODE = "35020603080000017"


def test_reading_is_frozen_and_slotted() -> None:
    r = Reading(CODE, "pm25", T, T, 35.0, "ug/m3")
    with pytest.raises(FrozenInstanceError):
        r.value = 1.0  # type: ignore[misc]
    assert not hasattr(r, "__dict__")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "2bad"}, "metric"),
        ({"value": float("nan")}, "finite"),
        ({"value": True}, "number"),
        ({"event_time": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"event_time": datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=8)))}, "UTC"),
        ({"device_code": "bad code!"}, "plausible"),
    ],
)
def test_reading_validates(kwargs: dict, match: str) -> None:
    base = {"device_code": CODE, "metric": "pm25", "event_time": T, "received_at": T, "value": 1.0, "unit": ""}
    base.update(kwargs)
    with pytest.raises(RecordError, match=match):
        Reading(**base)


def test_reading_key_is_exact_for_int_and_float_times() -> None:
    a = Reading(CODE, "pm25", utc_from_epoch_us(1_700_000_000_000_000), T, 1.0, "")
    b = Reading(CODE, "pm25", datetime.fromtimestamp(1_700_000_000.0, tz=UTC), T, 1.0, "")
    assert a.key == b.key == (CODE, "pm25", 1_700_000_000_000_000)


def test_epoch_round_trip() -> None:
    for us in (0, 1, 1_700_000_000_123_456, 4_102_444_800_000_000):
        assert epoch_us(utc_from_epoch_us(us)) == us


def test_raw_message_validates() -> None:
    RawMessage("citybrain/up/x/telemetry", b"{}", T)
    with pytest.raises(RecordError):
        RawMessage("", b"", T)
    with pytest.raises(RecordError):
        RawMessage("t", "text", T)  # type: ignore[arg-type]


def test_alert_json_and_deterministic_id() -> None:
    aid = alert_id(CODE, "r", T)
    assert aid == alert_id(CODE, "r", T) != alert_id(CODE, "r", T + timedelta(seconds=1))
    a = Alert(aid, "r", CODE, "350206", Severity.MAJOR, AlertState.OPEN, T, "pm25", 80.0, 75.0, "high")
    doc = a.to_json()
    assert doc["v"] == 1 and doc["severity"] == "major" and doc["opened_at"] == "2026-11-29T08:00:00Z"


def test_severity_parse() -> None:
    assert Severity.parse("critical") is Severity.CRITICAL
    with pytest.raises(RecordError):
        Severity.parse("loud")


def test_quality_values() -> None:
    assert [q.value for q in Quality] == ["good", "suspect", "bad"]
