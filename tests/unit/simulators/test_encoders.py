"""Every simulator encoding is accepted by the platform's own decoders."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.records import RawMessage, Transport
from devices.index import DeviceIndex, DeviceInfo
from devices.models import shipped_models
from ingest.adapters.hj212.codec import decode as hj212_decode
from ingest.adapters.hj212.codec import to_readings
from ingest.adapters.hj212.units import wire_units
from ingest.adapters.json.codec import decode as json_decode
from ingest.adapters.manhole.codec import decode as manhole_decode
from ingest.adapters.manhole.codec import to_readings as manhole_readings
from simulators.air import AirStation
from simulators.city import build_sites, make_model
from simulators.encoders import (
    CN_DAY,
    CN_HOUR,
    CN_MINUTE,
    aggregate,
    hj212_aggregate,
    hj212_rtd,
    imei_for,
    json_batch,
    json_telemetry,
    manhole_frame,
)
from simulators.manhole import ManholeCover
from simulators.noise import NoiseMonitor
from simulators.pole import SmartPole
from simulators.water import WaterStation
from streams.normalise import normalise

T = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
RX = T + timedelta(seconds=1)
TZ = ZoneInfo("Asia/Shanghai")
MODELS = shipped_models()


@pytest.mark.parametrize("ts_format", ["iso", "s", "ms"])
def test_json_telemetry_round_trips_through_the_json_codec(ts_format: str) -> None:
    pole = SmartPole("35020307015000001", seed=1)
    values = pole.sample(T)
    readings = json_decode(
        json_telemetry(pole.model, T, values, ts_format=ts_format), device_code=pole.code, received_at=RX
    )
    assert {r.metric: r.value for r in readings} == pytest.approx(values)
    assert {r.event_time for r in readings} == {T}


def test_json_batch_is_the_documented_records_form() -> None:
    air = AirStation("35020303085000003", seed=1)
    records = [(T + timedelta(minutes=i), air.sample(T + timedelta(minutes=i))) for i in range(3)]
    readings = json_decode(json_batch(air.model, records), device_code=air.code, received_at=RX)
    assert sorted({r.event_time for r in readings}) == [t for t, _ in records]


@pytest.mark.parametrize(
    ("sim", "st"), [(AirStation("35020303085000003", seed=1), "22"), (NoiseMonitor("35020303115000001", seed=1), "23")]
)
def test_hj212_realtime_frames_decode_to_the_model_metrics(sim: AirStation | NoiseMonitor, st: str) -> None:
    values = sim.sample(T)
    packet = hj212_decode(hj212_rtd(sim.model, sim.code, T, values))
    assert (packet.st, packet.cn, packet.mn, packet.needs_ack) == (st, "2011", sim.code, True)
    data = to_readings(
        packet,
        device_code=sim.code,
        received_at=RX,
        tz=TZ,
        metric_for_code=sim.model.by_hj212,
        unit_for_code=wire_units(sim.model, packet.st),
    )
    assert data.unknown_codes == ()
    # Ambient stations send gases as real ones do: SO2/NO2/O3 in µg/m³, CO in mg/m³ (issue 15).
    canonical = {
        r.metric: sim.model.metrics[r.metric].convert_from(r.unit or None).apply(r.value) for r in data.readings
    }
    assert canonical == pytest.approx(values, abs=1e-3)
    assert {r.metric: r.value for r in data.readings} == pytest.approx(canonical, abs=1e-3)  # sent as stored
    if st == "22":
        assert {r.metric: r.unit for r in data.readings if r.metric in ("no2", "o3", "co")} == {
            "no2": "ug/m3",
            "o3": "ug/m3",
            "co": "mg/m3",
        }
    assert {r.event_time for r in data.readings} == {T}
    assert {r.flag for r in data.readings} == {"N"}


@pytest.mark.parametrize("cn", [CN_MINUTE, CN_HOUR, CN_DAY])
def test_hj212_water_aggregates_carry_avg_min_max_and_flag(cn: str) -> None:
    water = WaterStation("35021103085000001", seed=2)
    start = T - timedelta(hours=1)
    stats = aggregate(water.sample, start, T, 6)
    packet = hj212_decode(hj212_aggregate(water.model, water.code, cn, start, stats, flags={"ph": "M"}))
    assert (packet.st, packet.cn) == ("21", cn)
    data = to_readings(packet, device_code=water.code, received_at=RX, tz=TZ, metric_for_code=water.model.by_hj212)
    got = {r.metric: r for r in data.readings}
    for name, (avg, low, high) in stats.items():
        assert got[name].value == pytest.approx(avg, abs=1e-3)
        assert got[f"{name}_min"].value == pytest.approx(low, abs=1e-3)
        assert got[f"{name}_max"].value == pytest.approx(high, abs=1e-3)
        assert low <= avg <= high
    assert got["ph"].flag == "M" and got["do"].flag == "N"
    assert {r.event_time for r in data.readings} == {start}


def test_manhole_binary_frame_decodes_with_the_production_codec() -> None:
    cover = ManholeCover("35020301025000001", seed=3)
    values = cover.sample(T)
    frame = manhole_decode(manhole_frame(cover.code, T, values, kind="alarm", alarms={"water_high"}, counter=7))
    assert frame.imei == imei_for(cover.code) and frame.counter == 7
    assert frame.alarm_names() == ("water_high",)
    got = {r.metric: r.value for r in manhole_readings(frame, cover.code, RX)}
    assert got["water_distance"] == values["water_distance"]
    assert got["battery"] == round(values["battery"])
    assert got["tilt"] == pytest.approx(values["tilt"], abs=0.06)
    assert got["lid_open"] == values["lid_open"]
    periodic = manhole_decode(manhole_frame(cover.code, T, values))
    assert periodic.alarm_names() == ("periodic",)


def _through_the_platform(
    site_model: str, transport: str
) -> tuple[dict[str, float], dict[str, tuple[float, str]], list]:
    """Encode one sample of a city device and run it through the stream worker's normaliser.

    Returns the sent values, the accepted metric → (canonical value, quality), and the rejects.
    """
    (site,) = build_sites({site_model: 1}, seed=3)
    model = make_model(site, seed=1)
    dm = model.model
    info = DeviceInfo(site.code, dm.key, dm.device_class, site.district, site.cell, "active", dict(site.attributes))
    values = model.sample(T)
    if transport == "mqtt":
        raw = RawMessage(f"citybrain/up/{site.code}/telemetry", json_telemetry(dm, T, values), RX)
        t_expected = T
    elif transport == "hj212" and dm.id == "water-station":
        start = T - timedelta(hours=1)
        stats = {k: (v, v, v) for k, v in values.items()}
        raw = RawMessage("hj212/127.0.0.1", hj212_aggregate(dm, site.code, CN_HOUR, start, stats), RX)
        raw = RawMessage(raw.topic, raw.payload, RX, Transport.HJ212, site.code)
        t_expected = start
    elif transport == "hj212":
        raw = RawMessage("hj212/127.0.0.1", hj212_rtd(dm, site.code, T, values), RX, Transport.HJ212, site.code)
        t_expected = T
    else:  # the NB-IoT webhook forwards the binary frame as is
        frame = manhole_frame(site.code, T, values)
        raw = RawMessage("webhook/ctwing", frame, RX, Transport.WEBHOOK, site.code)
        t_expected = T
    out = normalise([raw], DeviceIndex([info]), MODELS, now=RX, max_future_skew=timedelta(minutes=5))
    assert {r.event_time for r, _ in out.readings} <= {t_expected}
    return values, {r.metric: (r.value, r.quality.value) for r, _ in out.readings}, out.rejects


@pytest.mark.parametrize(
    ("model_id", "transport"),
    [
        ("air-station", "mqtt"),
        ("air-station", "hj212"),
        ("air-micro", "mqtt"),
        ("air-micro", "hj212"),
        ("water-station", "mqtt"),
        ("water-station", "hj212"),
        ("noise-monitor", "mqtt"),
        ("noise-monitor", "hj212"),
        ("manhole-cover", "mqtt"),
        ("manhole-cover", "webhook"),
        ("smart-pole", "mqtt"),
    ],
)
def test_every_model_and_protocol_is_accepted_by_the_stream_worker(model_id: str, transport: str) -> None:
    # The worker's own path: ledger lookup, decoder choice by transport, units, range check.
    values, got, rejects = _through_the_platform(model_id, transport)
    assert rejects == []
    if transport == "webhook":
        # The binary frame carries the cover's wire fields only, in its own resolution.
        assert got and {q for _, q in got.values()} == {"good"}
        assert got["water_distance"][0] == values["water_distance"]
        return
    assert set(got) == set(values)
    for name, value in values.items():
        assert got[name][0] == pytest.approx(value, abs=1e-3), name
        assert got[name][1] == "good", name


def test_json_flags_travel_in_the_object_form() -> None:
    air = AirStation("35020303085000003", seed=1)
    values = air.sample(T)
    payload = json_telemetry(air.model, T, values, flags={"pm25": "M"})
    assert json.loads(payload)["metrics"]["pm25"] == {"value": values["pm25"], "flag": "M"}
    readings = {r.metric: r for r in json_decode(payload, device_code=air.code, received_at=RX)}
    assert readings["pm25"].flag == "M" and readings["pm10"].flag is None
    batch = json_batch(air.model, [(T, values), (T + timedelta(minutes=1), values)], flags=[{}, {"no2": "C"}])
    flagged = [(r.event_time, r.metric) for r in json_decode(batch, device_code=air.code, received_at=RX) if r.flag]
    assert flagged == [(T + timedelta(minutes=1), "no2")]


def test_hj212_data_flags_become_quality_in_the_worker() -> None:
    water = WaterStation("35021103085000001", seed=2)
    start = T - timedelta(hours=1)
    stats = {k: (v, v, v) for k, v in water.sample(start).items()}
    frame = hj212_aggregate(water.model, water.code, CN_HOUR, start, stats, flags={"ph": "M", "do": "D"})
    info = DeviceInfo(water.code, water.model.key, "water", water.code[:6], None, "active", {})
    raw = RawMessage("hj212/127.0.0.1", frame, RX, Transport.HJ212, water.code)
    out = normalise([raw], DeviceIndex([info]), MODELS, now=RX, max_future_skew=timedelta(minutes=5))
    row = next(iter(out.rows["water"].values()))
    assert row.flags == {"ph": "suspect:M", "do": "bad:D"}
