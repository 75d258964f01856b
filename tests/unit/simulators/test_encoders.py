"""Every simulator encoding is accepted by the platform's own decoders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from devices.models import shipped_models
from ingest.adapters.hj212.codec import decode as hj212_decode
from ingest.adapters.hj212.codec import to_readings
from ingest.adapters.json.codec import decode as json_decode
from ingest.adapters.manhole.codec import decode as manhole_decode
from ingest.adapters.manhole.codec import to_readings as manhole_readings
from simulators.air import AirStation
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
    data = to_readings(packet, device_code=sim.code, received_at=RX, tz=TZ, metric_for_code=sim.model.by_hj212)
    assert data.unknown_codes == ()
    assert {r.metric: r.value for r in data.readings} == pytest.approx(values, abs=1e-3)
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
