"""The columnar normalisation gives exactly what normalising value by value gives.

``_reference`` below is the per-value implementation ``streams.normalise``
had before it went columnar, kept as the specification. Random batches
(seeded, so the suite is reproducible) mix canonical JSON with every time
format, known and unknown metrics and units, values out of range and values
whose conversion overflows, future event times, repeated keys (row merges),
multi-record payloads, malformed payloads, status and ack messages, unknown,
registered and suspended devices, HJ 212 frames with data flags and binary
manhole frames. Outputs are compared field by field, orders included.
"""

from __future__ import annotations

import json
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from core.records import Quality, RawMessage, Reading, RecordError, Transport, epoch_us
from core.topics import TopicError, parse_uplink
from devices.errors import UnitError
from devices.index import DeviceIndex, DeviceInfo
from devices.lifecycle import ACCEPTING
from devices.models import ModelError, ModelRegistry, shipped_models
from ingest.errors import DecodeError
from simulators.encoders import hj212_rtd, imei_for, manhole_frame
from streams.normalise import Normalised, Reject, Row, _decoder_for, normalise

NOW = datetime(2026, 11, 29, 8, 0, 10, tzinfo=UTC)
SKEW = timedelta(minutes=5)
_QRANK = {Quality.GOOD: 0, Quality.SUSPECT: 1, Quality.BAD: 2}


def _reference(
    batch: list[RawMessage], index: DeviceIndex, models: ModelRegistry, *, now: datetime, max_future_skew: timedelta
) -> Normalised:
    """Message by message, value by value: the specification of ``normalise``."""
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
            out.status.append((raw, dev))
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


# -- the fleet ---------------------------------------------------------------------------------------

MODELS = shipped_models()
AIR = "350206030800000"  # + 2 digits
WATER = "35020603050000001"
MANHOLE = "35020603060000001"
FLEET = [
    DeviceInfo(f"{AIR}11", "air-station@1", "air", "350206", None, "active", {}),
    DeviceInfo(f"{AIR}12", "air-station@1", "air", "350206", None, "registered", {}),
    DeviceInfo(f"{AIR}13", "air-station@1", "air", "350206", None, "suspended", {}),
    DeviceInfo(f"{AIR}14", "air-micro@1", "air", "350206", None, "active", {}),
    DeviceInfo("35020603090000011", "noise-monitor@1", "noise", "350206", None, "active", {}),
    DeviceInfo("35020603100000011", "smart-pole@1", "pole", "350206", None, "registered", {}),
    DeviceInfo(f"{AIR}15", "no-such-model@1", "air", "350206", None, "active", {}),
    DeviceInfo(WATER, "water-station@1", "water", "350206", None, "active", {}),
    DeviceInfo(MANHOLE, "manhole-cover@1", "manhole", "350206", None, "active", {"imei": imei_for(MANHOLE)}),
]
INDEX = DeviceIndex(FLEET)
JSON_CODES = [d.code for d in FLEET if d.code not in (WATER, MANHOLE)] + [f"{AIR}99", "bad code"]

_METRICS = ["pm25", "pm10", "co", "so2", "temperature", "humidity", "pressure", "la", "voltage", "lamp_on", "nope"]
_UNITS = ["", "", "", "ug/m3", "mg/m3", "ppm", "ppb", "degF", "K", "hPa", "mV", "furlongs", "dB(A)"]
# A few instants reused often, so values of different messages share rows (and times compare equal).
_TIMES = [NOW - timedelta(minutes=m) for m in (0, 1, 5, 60 * 24 * 3)] + [NOW + timedelta(minutes=4), NOW + SKEW * 2]
_VALUES = st.one_of(
    st.floats(-1e3, 1e4, allow_nan=False).map(lambda v: round(v, 3)),
    st.sampled_from([0.0, 100.0, 150.0, -41.0, 1e308, -1e308, 1e200]),
    st.integers(-50, 5000),
    st.booleans(),
)


@st.composite
def _metric_value(draw: st.DrawFn) -> Any:
    value = draw(_VALUES)
    unit = draw(st.sampled_from(_UNITS))
    flag = draw(st.sampled_from([None, None, None, "N", "x"]))
    if not unit and flag is None:
        return value
    doc: dict[str, Any] = {"value": value}
    if unit:
        doc["unit"] = unit
    if flag is not None:
        doc["flag"] = flag
    return doc


def _ts(t: datetime, fmt: str) -> Any:
    if fmt == "iso":
        return t.isoformat()
    if fmt == "s":
        return t.timestamp()
    if fmt == "ms":
        return round(t.timestamp() * 1000)
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@st.composite
def _json_message(draw: st.DrawFn) -> RawMessage:
    code = draw(st.sampled_from(JSON_CODES))
    kind = draw(st.sampled_from(["telemetry"] * 8 + ["status", "event", "nonsense"]))
    records = []
    for _ in range(draw(st.integers(1, 3))):
        t = draw(st.sampled_from(_TIMES))
        names = draw(st.lists(st.sampled_from(_METRICS), min_size=1, max_size=6))
        records.append({"ts": _ts(t, draw(st.sampled_from(["iso", "s", "ms", "z"]))), "metrics": {}})
        for name in names:  # repeated names in one record: the last one wins in JSON
            records[-1]["metrics"][name] = draw(_metric_value())
    doc: dict[str, Any] = {"v": 1, "records": records} if len(records) > 1 else {"v": 1, **records[0]}
    payload = json.dumps(doc, separators=(",", ":")).encode()
    if kind == "event" and draw(st.booleans()):
        payload = b'{"v":1,"ack":"c1","ok":true}'
    payload = draw(st.sampled_from([payload] * 12 + [b"{oops", b"[]", b'{"v":1,"ts":"yesterday","metrics":{"a":1}}']))
    rx = NOW - timedelta(seconds=draw(st.integers(0, 3)))
    return RawMessage(f"citybrain/up/{code}/{kind}", payload, rx, Transport.MQTT, None)


@st.composite
def _hj212_message(draw: st.DrawFn) -> RawMessage:
    model = MODELS.get("water-station@1")
    names = [n for n, m in model.metrics.items() if m.hj212]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True))
    values = {n: draw(st.floats(-5, 400, allow_nan=False).map(lambda v: round(v, 2))) for n in chosen}
    flags = {n: draw(st.sampled_from("NNNNDTMF")) for n in chosen}
    t = draw(st.sampled_from(_TIMES)).replace(second=0)
    code = draw(st.sampled_from([WATER, WATER, f"{AIR}11"]))
    return RawMessage("hj212/127.0.0.1", hj212_rtd(model, code, t, values, flags=flags), NOW, Transport.HJ212, code)


@st.composite
def _manhole_message(draw: st.DrawFn) -> RawMessage:
    values = {
        "battery": float(draw(st.integers(0, 100))),
        "temperature": draw(st.floats(-30, 70).map(lambda v: round(v, 1))),
        "water_distance": float(draw(st.integers(0, 30000))),
        "tilt": draw(st.floats(0, 90).map(lambda v: round(v, 1))),
        "lid_open": float(draw(st.booleans())),
        "ch4": draw(st.floats(0, 100).map(lambda v: round(v, 1))),
        "h2s": draw(st.floats(0, 600).map(lambda v: round(v, 1))),
        "rssi": float(draw(st.integers(-128, 0))),
    }
    t = draw(st.sampled_from(_TIMES)).replace(microsecond=0)
    frame = manhole_frame(MANHOLE, t, values)
    return RawMessage(f"webhook/ctwing/{imei_for(MANHOLE)}", frame, NOW, Transport.WEBHOOK, MANHOLE)


_MESSAGES = st.one_of(
    _json_message(),
    _json_message(),
    _json_message(),
    _hj212_message(),
    _manhole_message(),
    st.just(RawMessage("webhook/x", b"{}", NOW, Transport.WEBHOOK, None)),
)


def _shape(out: Normalised) -> dict[str, Any]:
    """Everything in a result, with every order that a consumer could observe."""
    return {
        "rows": [
            (cls, [(key, astuple(row), list(row.values), list(row.flags)) for key, row in rows.items()])
            for cls, rows in out.rows.items()
        ],
        "readings": [(astuple(r), type(r.value), dev) for r, dev in out.readings],
        "rejects": out.rejects,
        "seen": list(out.seen.items()),
        "skewed": out.skewed,
        "first_seen": out.first_seen,
        "status": out.status,
    }


@seed(20261129)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MESSAGES, max_size=25))
def test_columnar_equals_per_value_reference(batch: list[RawMessage]) -> None:
    got = normalise(batch, INDEX, MODELS, now=NOW, max_future_skew=SKEW)
    want = _reference(batch, INDEX, MODELS, now=NOW, max_future_skew=SKEW)
    assert _shape(got) == _shape(want)


def test_overflowing_conversion_is_rejected_in_message_order() -> None:
    # pm25 sent in mg/m3 is multiplied by 1000: 1e308 overflows to inf, a bad_value reject
    # that must sit between the rejects of the messages around it.
    bad = json.dumps({"v": 1, "ts": NOW.isoformat(), "metrics": {"pm25": {"value": 1e308, "unit": "mg/m3"}}})
    before = RawMessage(f"citybrain/up/{AIR}99/telemetry", b"{}", NOW)
    after = RawMessage(f"citybrain/up/{AIR}11/telemetry", b"{oops", NOW)
    middle = RawMessage(f"citybrain/up/{AIR}11/telemetry", bad.encode(), NOW)
    out = normalise([before, middle, after], INDEX, MODELS, now=NOW, max_future_skew=SKEW)
    assert [r.reason for r in out.rejects] == ["unknown_device", "bad_value", "bad_json"]
    assert out.rejects[1].detail == "value of pm25 must be finite"
    assert not out.readings and out.rows == {"air": {}}
    assert _shape(out) == _shape(_reference([before, middle, after], INDEX, MODELS, now=NOW, max_future_skew=SKEW))


def test_canonical_readings_are_full_records() -> None:
    raw = RawMessage(
        f"citybrain/up/{AIR}11/telemetry",
        json.dumps({"v": 1, "ts": NOW.isoformat(), "metrics": {"co": {"value": 1, "unit": "ppm"}}}).encode(),
        NOW,
    )
    ((r, _),) = normalise([raw], INDEX, MODELS, now=NOW, max_future_skew=SKEW).readings
    # Built without re-validation, it must still be an ordinary, equal, hashable record.
    twin = Reading(r.device_code, r.metric, r.event_time, r.received_at, r.value, r.unit, r.quality, r.flag)
    assert r == twin and hash(r) == hash(twin) and type(r.value) is float and r.unit == "mg/m3"
    assert r.to_json()["value"] == r.value
