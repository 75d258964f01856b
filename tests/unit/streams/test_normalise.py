from datetime import UTC, datetime, timedelta

from core.records import Quality, RawMessage, Transport
from devices.index import DeviceIndex, DeviceInfo
from devices.models import shipped_models
from ingest.adapters.json.codec import encode
from streams.normalise import normalise

CODE = "35020603080000017"
NOW = datetime(2026, 11, 29, 8, 0, 10, tzinfo=UTC)
T = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def _index(state: str = "active") -> DeviceIndex:
    return DeviceIndex([DeviceInfo(CODE, "air-station@1", "air", "350206", None, state, {})])


def _raw(payload: bytes, code: str = CODE) -> RawMessage:
    return RawMessage(f"citybrain/up/{code}/telemetry", payload, NOW, Transport.MQTT, code)


def _run(*raws: RawMessage, state: str = "active"):
    return normalise(list(raws), _index(state), shipped_models(), now=NOW, max_future_skew=timedelta(minutes=5))


def test_units_are_converted_to_canonical() -> None:
    out = _run(_raw(encode(T, {"pm25": (0.035, "mg/m3"), "co": (1.0, "ppm"), "temperature": (86, "degF")})))
    vals = {r.metric: (round(r.value, 4), r.unit) for r, _ in out.readings}
    assert vals == {"pm25": (35.0, "ug/m3"), "co": (round(28.010 / 24.465, 4), "mg/m3"), "temperature": (30.0, "degC")}
    row = out.rows["air"][(CODE, int(T.timestamp() * 1_000_000))]
    assert row.values["pm25"] == 35.0 and row.quality == 0


def test_unknown_unit_is_a_rejection_not_a_guess() -> None:
    out = _run(_raw(encode(T, {"pm25": (35, "furlongs"), "pm10": 50})))
    assert [r.reason for r in out.rejects] == ["bad_unit"]
    assert [r.metric for r, _ in out.readings] == ["pm10"]


def test_out_of_range_is_suspect_and_flagged() -> None:
    out = _run(_raw(encode(T, {"humidity": 150})))
    ((r, _),) = out.readings
    assert r.quality is Quality.SUSPECT
    row = next(iter(out.rows["air"].values()))
    assert row.quality == 1 and row.flags == {"humidity": "suspect"}


def test_future_readings_are_flagged_as_clock_skew() -> None:
    out = _run(_raw(encode(NOW + timedelta(hours=1), {"pm25": 10})))
    assert len(out.skewed) == 1 and out.readings[0][0].quality is Quality.SUSPECT


def test_late_data_is_accepted() -> None:
    out = _run(_raw(encode(NOW - timedelta(days=3), {"pm25": 10})))
    assert len(out.readings) == 1 and not out.rejects


def test_int_and_float_timestamps_merge_into_one_row() -> None:
    out = _run(_raw(encode(T, {"pm25": 10}, ts_format="s")), _raw(encode(T, {"pm10": 20}, ts_format="ms")))
    assert out.row_count() == 1
    row = next(iter(out.rows["air"].values()))
    assert row.values == {"pm25": 10, "pm10": 20}


def test_unknown_suspended_and_malformed_are_rejected_with_reasons() -> None:
    other = "35020603080000025"
    out = _run(_raw(b"{oops"), _raw(encode(T, {"pm25": 1}), code=other), _raw(encode(T, {"nope": 1})))
    assert sorted(r.reason for r in out.rejects) == ["bad_json", "unknown_device", "unknown_metric"]
    out = _run(_raw(encode(T, {"pm25": 1})), state="suspended")
    assert [r.reason for r in out.rejects] == ["device_suspended"]


def test_first_valid_message_marks_registered_device() -> None:
    out = _run(_raw(encode(T, {"pm25": 1})), state="registered")
    assert out.first_seen == {CODE}
    assert out.seen[CODE] == (NOW, T)
