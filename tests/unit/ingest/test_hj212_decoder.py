"""The stream-side HJ 212 decoder on the byte fixtures (tests/fixtures/hj212)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import Quality, RawMessage, Transport
from devices.index import DeviceInfo
from devices.models import shipped_models
from ingest.adapters.hj212.decoder import decode_hj212, make_hj212_decoder, packet_of
from ingest.errors import DecodeError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hj212"
RX = datetime(2024, 5, 15, 2, 30, 5, tzinfo=UTC)
MODELS = shipped_models()


def raw(payload: bytes, code: str) -> RawMessage:
    return RawMessage("hj212/127.0.0.1:5000", payload, RX, Transport.HJ212, code)


def dev(code: str, model: str, **attributes: object) -> DeviceInfo:
    return DeviceInfo(code, MODELS.get(model).key, "x", "350206", None, "active", attributes)


def test_air_rtd_maps_codes_units_and_flags() -> None:
    code = "35020603080000017"
    model = MODELS.get("air-station")
    readings = decode_hj212(raw((FIXTURES / "air_2011_rtd.bin").read_bytes(), code), dev(code, "air-station"), model)
    by = {r.metric: r for r in readings}
    assert set(by) == {"pm25", "pm10", "so2", "no2", "co", "o3"}
    assert by["pm25"].value == 35.2 and by["pm25"].unit == "ug/m3"
    # An ambient station (ST=22) sends SO2, NO2, O3 in µg/m³ and CO in mg/m³ (issue 15).
    assert (by["so2"].value, by["so2"].unit) == (8.0, "ug/m3")
    assert (by["no2"].unit, by["o3"].unit, by["co"].unit) == ("ug/m3", "ug/m3", "mg/m3")
    assert by["co"].quality is Quality.BAD and by["o3"].quality is Quality.SUSPECT
    # DataTime 2024-05-15 10:30:00 Asia/Shanghai
    assert by["pm25"].event_time == datetime(2024, 5, 15, 2, 30, tzinfo=UTC)


def test_split_payload_is_reassembled_and_min_max_left_out() -> None:
    lines = (FIXTURES / "water_2061_split_2of2.bin").read_bytes().splitlines(keepends=True)
    payload = b"".join(lines[:2])
    code = "35021103100000016"
    model = MODELS.get("water-station")
    readings = decode_hj212(raw(payload, code), dev(code, "water-station"), model)
    assert sorted(r.metric for r in readings) == ["do", "nh3n", "ph"]


def test_device_timezone_attribute() -> None:
    code = "35020603080000017"
    decoder = make_hj212_decoder(ZoneInfo("UTC"))
    payload = (FIXTURES / "air_2011_rtd.bin").read_bytes()
    model = MODELS.get("air-station")
    (first, *_) = decoder(raw(payload, code), dev(code, "air-station"), model)
    assert first.event_time == datetime(2024, 5, 15, 10, 30, tzinfo=UTC)
    (first, *_) = decoder(raw(payload, code), dev(code, "air-station", timezone="Asia/Shanghai"), model)
    assert first.event_time == datetime(2024, 5, 15, 2, 30, tzinfo=UTC)


def test_incomplete_split_and_garbage_are_rejected() -> None:
    lines = (FIXTURES / "water_2061_split_2of2.bin").read_bytes().splitlines(keepends=True)
    with pytest.raises(DecodeError) as info:
        packet_of(lines[0])
    assert info.value.reason == "bad_split"
    with pytest.raises(DecodeError):
        packet_of(b"##0010")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_no_payload_crashes_packet_of(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        packet_of(data)
