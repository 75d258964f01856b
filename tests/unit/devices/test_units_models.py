import math
from pathlib import Path

import pytest

from devices.errors import ModelError, UnitError
from devices.models import load_models, shipped_models
from devices.units import conversion


@pytest.mark.parametrize(
    ("src", "dst", "value", "expected"),
    [
        ("mg/m3", "ug/m3", 0.035, 35.0),
        ("µg/m³", "mg/m3", 1500, 1.5),
        ("°F", "degC", 212, 100.0),
        ("K", "degC", 273.15, 0.0),
        ("mm", "m", 1234, 1.234),
        ("m", "mm", 1.5, 1500),
        ("km/h", "m/s", 36, 10),
        ("hPa", "kPa", 1013, 101.3),
    ],
)
def test_conversions(src: str, dst: str, value: float, expected: float) -> None:
    assert math.isclose(conversion(src, dst).apply(value), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_co_ppm_to_mg_m3_at_reference_state() -> None:
    # 1 ppm CO × 28.010 g/mol / 24.465 L/mol (25 °C, 101.325 kPa) = 1.1449 mg/m³
    assert math.isclose(conversion("ppm", "mg/m3", molar_mass=28.010).apply(1), 28.010 / 24.465)


def test_unknown_and_incompatible_units_are_rejected() -> None:
    with pytest.raises(UnitError, match="unknown unit"):
        conversion("furlongs", "m")
    with pytest.raises(UnitError, match="cannot convert"):
        conversion("mg/L", "ug/m3")
    with pytest.raises(UnitError, match="molar mass"):
        conversion("ppm", "mg/m3")


def test_shipped_models_load_and_cover_the_classes() -> None:
    reg = shipped_models()
    ids = {m.id for m in reg.all()}
    assert ids == {
        "air-station",
        "air-micro",
        "water-station",
        "blackodor-station",
        "noise-monitor",
        "manhole-cover",
        "smart-pole",
        "wastewater-source",
        "fluegas-source",
    }
    air = reg.get("air-station@1")
    assert air.metrics["pm25"].hj212 == "a34004"
    assert air.by_hj212["a21005"] == "co"
    assert air.metrics["co"].convert_from("ppm").apply(1) == pytest.approx(1.1449, rel=1e-3)
    with pytest.raises(UnitError, match="not accepted"):
        air.metrics["pm25"].convert_from("ppm")
    assert reg.get("air-station").key == "air-station@1"


def test_invalid_model_file_is_rejected_with_file_name(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "id: x\nversion: 1\ndevice_class: x\nclass_codes: ['0308']\nname: {en: X}\ncadence_s: 60\n"
        "metrics:\n  - {name: a, unit: parsecs, range: [0, 1]}\n"
    )
    with pytest.raises(ModelError, match=r"(?s)bad\.yaml.*parsecs"):
        load_models(tmp_path)


def test_model_with_reversed_range_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "id: x\nversion: 1\ndevice_class: x\nclass_codes: ['0308']\nname: {en: X}\ncadence_s: 60\n"
        "metrics:\n  - {name: a, unit: m, range: [5, 1]}\n"
    )
    with pytest.raises(ModelError, match="range"):
        load_models(tmp_path)


def test_a_source_model_gives_interval_data_their_own_metrics_and_discharge_amounts() -> None:
    ww = shipped_models().get("wastewater-source")
    assert {"hg", "hg_minute", "hg_minute_cou", "hg_hour", "hg_hour_min", "hg_hour_max", "hg_hour_cou"} <= set(
        ww.metrics
    )
    assert "hg_minute_min" not in ww.metrics  # minute data: Avg and Cou only
    assert "ph_hour_cou" not in ww.metrics  # pH has no discharge amount
    assert ww.metrics["hg_hour"].convert_from("ug/L").apply(50) == pytest.approx(0.05)
    assert ww.metrics["hg_hour_cou"].convert_from("g").apply(1.8) == pytest.approx(0.0018)
    assert ww.metrics["flow_hour_cou"].unit == "m3"
