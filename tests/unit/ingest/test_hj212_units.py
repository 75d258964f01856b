"""Units of HJ 212 factors by device model and station type, through normalisation to the rules (issue 15)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerts.engine import DeviceContext, evaluate_device
from alerts.rules import shipped_rules
from core.records import Quality, RawMessage, Transport
from devices.errors import ModelError
from devices.index import DeviceIndex, DeviceInfo
from devices.models import ModelRegistry, load_models, shipped_models
from ingest.adapters.hj212 import Hj212Packet, encode
from ingest.adapters.hj212.units import wire_units
from streams.normalise import normalise
from streams.pipeline import out_of_range

CODE = "35020603080000017"
NOW = datetime(2026, 11, 29, 8, 0, 10, tzinfo=UTC)
T0 = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
CST_OFFSET = timedelta(hours=8)  # DataTime is Asia/Shanghai local time


def frame(values: dict[str, str], t: datetime = T0, st: str = "22") -> bytes:
    cp = [("DataTime", f"{t + CST_OFFSET:%Y%m%d%H%M%S}")]
    for code, value in values.items():
        cp += [(f"{code}-Rtd", value), (f"{code}-Flag", "N")]
    qn = f"{t + CST_OFFSET:%Y%m%d%H%M%S}000"
    return encode(Hj212Packet(qn=qn, st=st, cn="2011", pw="123456", mn=CODE, flag=5, cp=tuple(cp)))


def run(payloads: list[bytes], model: str = "air-station@1", models: ModelRegistry | None = None):
    dev = DeviceInfo(CODE, model, "air", "350206", None, "active", {})
    raws = [RawMessage("hj212/127.0.0.1:5000", p, NOW, Transport.HJ212, CODE) for p in payloads]
    out = normalise(raws, DeviceIndex([dev]), models or shipped_models(), now=NOW, max_future_skew=timedelta(minutes=5))
    assert out.rejects == []
    return out, dev


# The station: an ambient air station (ST=22) reporting SO2 6, NO2 28, O3 96 (µg/m³).
AMBIENT = {"a21026": "6", "a21004": "28", "a05024": "96", "a21005": "0.8", "a34004": "35", "a34002": "45"}


def test_ambient_station_gases_are_stored_as_sent_in_ug_m3() -> None:
    out, _ = run([frame(AMBIENT)])
    got = {r.metric: (r.value, r.unit, r.quality) for r, _ in out.readings}
    assert got == {
        "so2": (6.0, "ug/m3", Quality.GOOD),
        "no2": (28.0, "ug/m3", Quality.GOOD),
        "o3": (96.0, "ug/m3", Quality.GOOD),
        "co": (0.8, "mg/m3", Quality.GOOD),  # CO is the one ambient gas in mg/m³
        "pm25": (35.0, "ug/m3", Quality.GOOD),
        "pm10": (45.0, "ug/m3", Quality.GOOD),
    }


def test_ambient_gases_an_hour_long_open_no_aqi_alert_and_keep_the_aqi_low() -> None:
    """Read as mg/m³, SO2 6 became 6000 µg/m³: AQI 200 and a major air.aqi.polluted alert."""
    payloads = [frame(AMBIENT, T0 + timedelta(minutes=m)) for m in range(0, 60, 5)]
    out, dev = run(payloads)
    readings = [r for r, _ in out.readings if not out_of_range(r, dev, shipped_models())]
    snapshot: dict[str, list[float]] = {}
    ctx = DeviceContext(CODE, "350206", "air", model="air-station")
    transitions, _ = evaluate_device(shipped_rules().for_class("air"), readings, ctx, snapshot, {}, 0)
    assert transitions == []
    assert snapshot["aqi"][0] <= 50  # 优: PM2.5 35 and small gases


@pytest.mark.parametrize("model", ["air-station@1", "air-micro@1"])
def test_ambient_default_comes_from_the_station_type(model: str) -> None:
    units = wire_units(shipped_models().get(model))
    assert {units["a21004"], units["a05024"], units["a34004"]} == {"ug/m3"}
    assert units["a21005"] == "mg/m3"
    # Water and noise stations report in their models' canonical units.
    assert wire_units(shipped_models().get("water-station@1"))["w21003"] == "mg/L"
    assert wire_units(shipped_models().get("noise-monitor@1"))["LA"] == "dB(A)"


def test_implausible_ambient_so2_is_flagged_and_kept_from_the_rules() -> None:
    """SO2 6000 µg/m³ at an ambient station is no measurement: stored suspect, no city-wide alert."""
    payloads = [frame({**AMBIENT, "a21026": "6000"}, T0 + timedelta(minutes=m)) for m in range(0, 60, 5)]
    out, dev = run(payloads)
    so2 = [r for r, _ in out.readings if r.metric == "so2"]
    assert {(r.value, r.quality) for r in so2} == {(6000.0, Quality.SUSPECT)}
    assert all(out_of_range(r, dev, shipped_models()) for r in so2)
    row = next(iter(out.rows["air"].values()))
    assert row.flags == {"so2": "suspect:N"} and row.quality == 1  # stored, flagged
    rules_see = [r for r, _ in out.readings if not out_of_range(r, dev, shipped_models())]
    snapshot: dict[str, list[float]] = {}
    ctx = DeviceContext(CODE, "350206", "air", model="air-station")
    transitions, _ = evaluate_device(shipped_rules().for_class("air"), rules_see, ctx, snapshot, {}, 0)
    assert transitions == [] and "so2" not in snapshot and snapshot["aqi"][0] <= 50


STACK_MODEL = """
id: stack-gas
version: 1
device_class: air
class_codes: ["0308"]
name: {en: Flue-gas CEMS}
hj212_st: "31"
cadence_s: 60
metrics:
  - {name: so2, hj212: a21026, unit: ug/m3, accepts: [mg/m3], range: [0, 10000000]}
  - {name: no2, hj212: a21004, unit: ug/m3, accepts: [mg/m3], range: [0, 10000000], hj212_unit: ug/m3}
"""


def test_source_station_default_is_appendix_b_mg_m3_and_a_model_may_override(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text(STACK_MODEL, encoding="utf-8")
    models = load_models(tmp_path)
    out, _ = run([frame({"a21026": "6", "a21004": "28"}, st="31")], "stack-gas@1", models)
    got = {r.metric: r.value for r, _ in out.readings}
    assert got == {"so2": 6000.0, "no2": 28.0}  # ST 31: 附录B mg/m³; no2: the model's own hj212_unit


def test_a_model_hj212_unit_must_be_one_the_metric_converts_from(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(STACK_MODEL.replace("hj212_unit: ug/m3", "hj212_unit: ppm"), encoding="utf-8")
    with pytest.raises(ModelError, match="hj212_unit"):
        load_models(tmp_path)
