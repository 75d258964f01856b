"""The pure manhole TLV codec on byte fixtures (tests/fixtures/manhole) and property tests."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.records import RawMessage, Transport
from devices.index import DeviceInfo
from devices.models import shipped_models
from ingest.adapters.manhole import FrameType, ManholeFrame, checksum, decode, encode, to_readings
from ingest.adapters.manhole.codec import MAX_FRAME_LEN
from ingest.adapters.manhole.decoder import decode_manhole
from ingest.errors import DecodeError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "manhole"
RX = datetime(2025, 11, 29, 0, 0, 30, tzinfo=UTC)
CODE = "35020301010000012"
MODEL = shipped_models().get("manhole-cover")


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def test_checksum_is_crc16_modbus() -> None:
    assert checksum(b"123456789") == 0x4B37


def test_periodic_fixture_decodes_every_tlv() -> None:
    frame = decode(fixture("periodic_full"))
    assert frame.imei == "868120301234567"
    assert frame.counter == 42
    assert frame.frame_type is FrameType.PERIODIC
    assert frame.battery == 92
    assert frame.temperature == 25.7
    assert frame.water_distance_mm == 2116
    assert frame.tilt == 1.5
    assert frame.lid_open is False
    assert frame.ch4 == 3.5
    assert frame.h2s == 1.2
    assert frame.alarm_names() == ("periodic",)
    assert frame.rssi_dbm == -87
    assert encode(frame) == fixture("periodic_full")


def test_alarm_fixture() -> None:
    frame = decode(fixture("alarm_lid_open"))
    assert frame.frame_type is FrameType.ALARM
    assert frame.lid_open is True
    assert frame.tilt == 12.5
    assert frame.alarm_names() == ("lid_opened", "tilt")


def test_unknown_tlv_is_skipped_but_kept() -> None:
    frame = decode(fixture("unknown_tlv"))
    assert frame.battery == 91
    assert frame.extra == ((0x7F, b"\x01\x02\x03"),)
    assert encode(frame) == fixture("unknown_tlv")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (fixture("bad_checksum"), "bad_checksum"),
        (fixture("truncated"), "truncated"),
        (b"", "truncated"),
        (b"\x69" + fixture("periodic_full")[1:], "bad_header"),
        (fixture("periodic_full")[:-1] + b"\x17", "bad_header"),
        (fixture("periodic_full")[:1] + b"\x02" + fixture("periodic_full")[2:], "bad_version"),
        (fixture("periodic_full") + b"\x00", "bad_length"),
        (b"\x68" * (MAX_FRAME_LEN + 1), "too_large"),
    ],
)
def test_rejections(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.reason == reason


def _frame_with_body(body: bytes) -> bytes:
    head = struct.pack(">BBH", 0x68, 1, 22 + len(body)) + b"868120301234567" + struct.pack(">HBI", 1, 1, 0) + body
    return head + checksum(head).to_bytes(2, "big") + b"\x16"


@pytest.mark.parametrize(
    "body",
    [
        b"\x01\x02\x00\x01",  # battery with 2 bytes
        b"\x01\x01\x10\x01\x01\x11",  # battery twice
        b"\x05\x01\x02",  # lid_open neither 0 nor 1
        b"\x02\x05\x00",  # runs past the body
        b"\x02",  # half a TLV header
    ],
)
def test_bad_tlvs(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode(_frame_with_body(body))
    assert info.value.reason == "bad_tlv"


def test_bad_imei_and_frame_type() -> None:
    data = bytearray(_frame_with_body(b""))
    data[4] = ord("x")
    head = bytes(data[:-3])
    with pytest.raises(DecodeError, match="imei"):
        decode(head + checksum(head).to_bytes(2, "big") + b"\x16")
    data = bytearray(_frame_with_body(b""))
    data[21] = 9
    head = bytes(data[:-3])
    with pytest.raises(DecodeError, match="frame_type"):
        decode(head + checksum(head).to_bytes(2, "big") + b"\x16")


def test_to_readings_use_model_metrics_and_device_time() -> None:
    frame = decode(fixture("periodic_full"))
    readings = to_readings(frame, CODE, RX)
    assert {r.metric for r in readings} <= set(MODEL.metrics)
    values = {r.metric: r.value for r in readings}
    assert values == {
        "tilt": 1.5,
        "lid_open": 0.0,
        "water_distance": 2116.0,
        "ch4": 3.5,
        "h2s": 1.2,
        "temperature": 25.7,
        "battery": 92.0,
        "rssi": -87.0,
    }
    assert {r.event_time for r in readings} == {datetime.fromtimestamp(1764374400, tz=UTC)}
    # no device clock: the receive time stands in
    assert {r.event_time for r in to_readings(decode(fixture("unknown_tlv")), CODE, RX)} == {RX}


def _dev(**attributes: object) -> DeviceInfo:
    return DeviceInfo(CODE, MODEL.key, "manhole", "350203", None, "active", attributes)


def test_stream_decoder_binary_json_and_imei_check() -> None:
    raw = RawMessage("webhook/ctwing", fixture("alarm_lid_open"), RX, Transport.WEBHOOK, CODE)
    assert {r.metric for r in decode_manhole(raw, _dev(), MODEL)} == {"tilt", "lid_open", "battery"}
    assert decode_manhole(raw, _dev(imei="868120301234567"), MODEL)
    with pytest.raises(DecodeError) as info:
        decode_manhole(raw, _dev(imei="868120300000000"), MODEL)
    assert info.value.reason == "device_mismatch"
    js = RawMessage("webhook/oceanconnect", b'{"v":1,"ts":1764374400,"metrics":{"tilt":3.5}}', RX, Transport.WEBHOOK)
    assert [r.value for r in decode_manhole(js, _dev(), MODEL)] == [3.5]


# --- properties ------------------------------------------------------------------------------

frames = st.builds(
    ManholeFrame,
    imei=st.text(alphabet="0123456789", min_size=15, max_size=15),
    counter=st.integers(0, 0xFFFF),
    frame_type=st.sampled_from(list(FrameType)),
    device_time=st.integers(0, 0xFFFFFFFF),
    battery=st.none() | st.integers(0, 255),
    temperature_dc=st.none() | st.integers(-0x8000, 0x7FFF),
    water_distance_mm=st.none() | st.integers(0, 0xFFFF),
    tilt_dd=st.none() | st.integers(0, 0xFFFF),
    lid_open=st.none() | st.booleans(),
    ch4_dlel=st.none() | st.integers(0, 0xFFFF),
    h2s_dppm=st.none() | st.integers(0, 0xFFFF),
    alarms=st.none() | st.integers(0, 0xFFFF),
    rssi_dbm=st.none() | st.integers(-128, 127),
    extra=st.lists(st.tuples(st.integers(0x0A, 0xFF), st.binary(max_size=40)), max_size=4).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(frames)
def test_round_trip(frame: ManholeFrame) -> None:
    data = encode(frame)
    assert decode(data) == frame
    assert encode(decode(data)) == data


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_no_input_crashes_the_decoder(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(frames, st.data())
def test_corrupted_frames_only_raise_decode_error(frame: ManholeFrame, data: st.DataObject) -> None:
    wire = bytearray(encode(frame))
    at = data.draw(st.integers(0, len(wire) - 1))
    wire[at] ^= data.draw(st.integers(1, 255))
    # CRC-16 detects every single-byte error, so a flipped byte is always refused
    with pytest.raises(DecodeError):
        decode(bytes(wire))
