"""Black and odorous water bodies on the boundary values of 城市黑臭水体整治工作指南 (2015), docs/standards.md §9."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alerts.engine import DeviceContext, evaluate_device
from alerts.errors import IndicatorError
from alerts.indicators.blackodor import BlackOdor, grade_point, grade_sample, indicator_level
from alerts.rules import shipped_rules
from core.records import Reading

N, L, H = BlackOdor.NONE, BlackOdor.LIGHT, BlackOdor.HEAVY


@pytest.mark.parametrize(
    ("indicator", "value", "level"),
    [
        # 透明度 cm: light 25–10, heavy < 10
        ("transparency", 25.1, N),
        ("transparency", 25, L),
        ("transparency", 10, L),
        ("transparency", 9.99, H),
        # 溶解氧 mg/L: light 0.2–2.0, heavy < 0.2
        ("do", 2.01, N),
        ("do", 2.0, L),
        ("do", 0.2, L),
        ("do", 0.19, H),
        # 氧化还原电位 mV: light −200–50, heavy < −200
        ("orp", 50.1, N),
        ("orp", 50, L),
        ("orp", -200, L),
        ("orp", -200.1, H),
        # 氨氮 mg/L: light 8.0–15, heavy > 15
        ("nh3n", 7.99, N),
        ("nh3n", 8.0, L),
        ("nh3n", 15, L),
        ("nh3n", 15.01, H),
    ],
)
def test_indicator_bands_at_the_guides_boundaries(indicator: str, value: float, level: BlackOdor) -> None:
    assert indicator_level(indicator, value) is level


def test_transparency_in_water_shallower_than_25_cm_uses_40_percent_of_the_depth() -> None:
    assert indicator_level("transparency", 7.9, depth_cm=20) is H  # < 8 cm = 40 % of 20
    assert indicator_level("transparency", 8, depth_cm=20) is L
    assert indicator_level("transparency", 20, depth_cm=20) is N  # the bed is visible
    assert indicator_level("transparency", 9, depth_cm=25) is H  # 25 cm is not shallow: < 10


def test_a_point_is_heavy_with_one_indicator_60_percent_heavy_or_two_30_percent() -> None:
    # DO heavy in 3 of 5 samples (60 %): heavy.
    assert grade_point({"do": [0.1, 0.1, 0.1, 1.0, 3.0], "nh3n": [1, 1, 1, 1, 1]}) is H
    # DO heavy in 2 of 5 (40 %), nothing else heavy: light.
    assert grade_point({"do": [0.1, 0.1, 1.0, 1.0, 3.0], "nh3n": [1, 1, 1, 1, 1]}) is L
    # Two indicators each 1 of 3 heavy (33 % ≥ 30 %): heavy.
    assert grade_point({"do": [0.1, 3, 3], "orp": [-250, 100, 100]}) is H
    # One indicator 1 of 4 heavy (25 %), another 2 of 4 (50 %): only one at ≥ 30 %: light.
    assert grade_point({"do": [0.1, 3, 3, 3], "orp": [-250, -250, 100, 100]}) is L
    # No datum in either band.
    assert grade_point({"transparency": [40, 60], "do": [5.0, 6.0], "orp": [120], "nh3n": [0.5]}) is N


def test_a_sample_grade_and_bad_input() -> None:
    assert grade_sample({"transparency": 30, "do": 2.0, "orp": 100, "nh3n": 1}) is L
    assert grade_sample({"transparency": 30, "do": 5, "orp": 100, "nh3n": 16}) is H
    assert grade_sample({"do": 5, "ph": 7}) is N  # other metrics are ignored
    with pytest.raises(IndicatorError):
        grade_sample({"ph": 7})
    with pytest.raises(IndicatorError):
        indicator_level("cod", 10)
    with pytest.raises(IndicatorError):
        indicator_level("do", float("nan"))


def test_a_black_odour_point_alerts_through_the_rules_and_outfalls_keep_the_gb3838_class() -> None:
    code, t = "35020603080000019", datetime(2026, 12, 7, 2, tzinfo=UTC)
    sample = {"transparency": 8.0, "do": 1.5, "orp": -100.0, "nh3n": 9.0}  # transparency heavy
    readings = [Reading(code, k, t, t, v, "") for k, v in sample.items()]
    out, _ = evaluate_device(shipped_rules().rules, readings, DeviceContext(code, "350206", "water"), {}, {}, 0)
    assert [(x.kind, x.alert.rule, x.alert.severity.name) for x in out] == [("open", "water.black_odor", "MAJOR")]
    # An outfall station is a river section for GB 3838: its class, not a black-odour grade.
    snap: dict = {}
    outfall = DeviceContext(code, "350206", "water", attributes={"waterbody": "outfall", "target_class": 3})
    river = [Reading(code, "nh3n", t, t, 1.2, ""), Reading(code, "do", t, t, 4.0, "")]
    out, _ = evaluate_device(shipped_rules().rules, river, outfall, snap, {}, 0)
    assert snap["water_class"][0] == 4 and "black_odor_grade" not in snap
    assert [x.alert.rule for x in out] == ["water.class.below_target"]
