import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.adapters.json.codec import decode, encode, parse_time
from ingest.errors import DecodeError

CODE = "35020603080000017"
RX = datetime(2026, 11, 29, 8, 0, 5, tzinfo=UTC)
T = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-29T08:00:00Z",
        "2026-11-29T16:00:00+08:00",
        "2026-11-29T08:00:00.000+00:00",
        1795939200,
        1795939200.0,
        1795939200000,
        1795939200000.0,
    ],
)
def test_every_time_format_gives_the_same_instant(value: object) -> None:
    assert parse_time(value) == T


@pytest.mark.parametrize(
    "value",
    ["2026-11-29T08:00:00", "yesterday", True, None, float("inf"), [], "2026-13-01T00:00Z", 1e306, -1e306, 10**30],
)
def test_bad_times(value: object) -> None:
    with pytest.raises(DecodeError) as ei:
        parse_time(value)
    assert ei.value.reason == "bad_time"


def test_decode_single_and_units() -> None:
    payload = b'{"v":1,"ts":"2026-11-29T08:00:00Z","metrics":{"pm25":35.5,"co":{"value":1.2,"unit":"ppm"},"door":true}}'
    rs = decode(payload, device_code=CODE, received_at=RX)
    assert [(r.metric, r.value, r.unit) for r in rs] == [("pm25", 35.5, ""), ("co", 1.2, "ppm"), ("door", 1.0, "")]
    assert all(r.event_time == T and r.received_at == RX for r in rs)


def test_data_flags_set_quality_like_hj212() -> None:
    payload = (
        b'{"v":1,"ts":"2026-11-29T08:00:00Z","metrics":{"pm25":{"value":35,"flag":"M"},'
        b'"pm10":{"value":50,"flag":"D"},"no2":{"value":20,"flag":"N"},"so2":{"value":5,"flag":"Q"},"o3":60}}'
    )
    got = {r.metric: (r.quality.value, r.flag) for r in decode(payload, device_code=CODE, received_at=RX)}
    assert got == {
        "pm25": ("suspect", "M"),  # maintenance: kept, doubtful
        "pm10": ("bad", "D"),  # device fault: not a measurement
        "no2": ("good", "N"),
        "so2": ("suspect", "Q"),  # unknown flag: never guessed good
        "o3": ("good", None),
    }


def test_decode_records_form() -> None:
    payload = encode(T, {"pm25": 1.0})[:-1] + b"}"
    doc = b'{"v":1,"records":[{"ts":1795939200,"metrics":{"pm25":1}},{"ts":1795939260,"metrics":{"pm25":2}}]}'
    rs = decode(doc, device_code=CODE, received_at=RX)
    assert [r.event_time - T for r in rs] == [timedelta(0), timedelta(seconds=60)]
    assert payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1,2]", "bad_schema"),
        (b'{"v":2,"ts":1,"metrics":{"a":1}}', "bad_schema"),
        (b'{"v":1,"metrics":{"a":1}}', "bad_schema"),
        (b'{"v":1,"ts":1,"metrics":{}}', "bad_schema"),
        (b'{"v":1,"ts":1,"metrics":{"a":"high"}}', "bad_value"),
        (b'{"v":1,"ts":1,"metrics":{"a":{"value":1,"unit":5}}}', "bad_schema"),
        (b'{"v":1,"ts":1,"metrics":{"9bad":1}}', "bad_schema"),
        (b'{"v":1,"records":[]}', "bad_schema"),
    ],
)
def test_bad_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as ei:
        decode(payload, device_code=CODE, received_at=RX)
    assert ei.value.reason == reason


def test_encode_decode_round_trip_all_formats() -> None:
    for fmt in ("iso", "s", "ms"):
        rs = decode(encode(T, {"pm25": 12.5, "co": (1.0, "mg/m3")}, ts_format=fmt), device_code=CODE, received_at=RX)
        assert {(r.metric, r.value, r.unit, r.event_time) for r in rs} == {
            ("pm25", 12.5, "", T),
            ("co", 1.0, "mg/m3", T),
        }


def test_local_zone_iso_converts_to_utc() -> None:
    cst = timezone(timedelta(hours=8))
    assert parse_time(datetime(2026, 1, 1, 8, tzinfo=cst).isoformat()) == datetime(2026, 1, 1, tzinfo=UTC)


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=300))
def test_no_bytes_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data, device_code=CODE, received_at=RX)


@settings(max_examples=200, derandomize=True)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_no_json_document_crashes_the_decoder(doc: object) -> None:
    import json

    try:
        raw = json.dumps({"v": 1, "ts": doc, "metrics": doc}).encode()
    except ValueError:
        return
    with contextlib.suppress(DecodeError):
        decode(raw, device_code=CODE, received_at=RX)
