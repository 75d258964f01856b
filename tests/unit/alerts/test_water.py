"""GB 3838-2002 Table 1 single-factor classes, with values read off the table by hand."""

from __future__ import annotations

import math

import pytest

from alerts.errors import IndicatorError
from alerts.indicators.water import (
    CLASS_LABELS,
    GB3838_TABLE1,
    factors_worse_than,
    single_factor_class,
    water_class,
    worse_than_target,
)


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        # COD limits I..V = 15, 15, 20, 30, 40: a value on a limit belongs to the better class
        ("cod", 15, 1),  # 15 ≤ 15 (I)
        ("cod", 15.1, 3),  # > 15 (I and II), ≤ 20 (III)
        ("cod", 20, 3),
        ("cod", 30, 4),
        ("cod", 40, 5),
        ("cod", 40.1, 6),  # above V -> 劣V
        # NH3-N limits 0.15, 0.5, 1.0, 1.5, 2.0
        ("nh3n", 0.15, 1),
        ("nh3n", 0.16, 2),
        ("nh3n", 0.5, 2),
        ("nh3n", 0.51, 3),
        ("nh3n", 2.0, 5),
        ("nh3n", 2.01, 6),
        # CODMn limits 2, 4, 6, 10, 15
        ("codmn", 0, 1),
        ("codmn", 6, 3),
        ("codmn", 6.1, 4),
        ("codmn", 16, 6),
        # BOD5 limits 3, 3, 4, 6, 10
        ("bod5", 3, 1),
        ("bod5", 3.5, 3),
        # Hg limits 0.00005, 0.00005, 0.0001, 0.001, 0.001
        ("hg", 0.00005, 1),
        ("hg", 0.00006, 3),
        ("hg", 0.001, 4),
        # Cd limits 0.001, 0.005, 0.005, 0.005, 0.01
        ("cd", 0.002, 2),
        ("cd", 0.006, 5),
        # fecal coliform limits 200, 2000, 10000, 20000, 40000 个/L
        ("fecal_coliform", 10000, 3),
        ("fecal_coliform", 40001, 6),
    ],
)
def test_max_parameters_boundary_belongs_to_better_class(param: str, value: float, expected: int) -> None:
    assert single_factor_class(param, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # DO is "≥": limits 7.5, 6, 5, 3, 2
        (9.0, 1),
        (7.5, 1),  # 7.5 ≥ 7.5 -> I
        (7.49, 2),
        (6, 2),
        (5.99, 3),
        (5, 3),
        (3, 4),
        (2.5, 5),
        (2, 5),
        (1.9, 6),  # below the V limit -> 劣V
        (0, 6),
    ],
)
def test_dissolved_oxygen_is_at_least(value: float, expected: int) -> None:
    assert single_factor_class("do", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(6, 1), (7.2, 1), (9, 1), (5.9, 6), (9.1, 6), (0, 6), (14, 6)],
)
def test_ph_inside_6_to_9_never_lowers_the_class(value: float, expected: int) -> None:
    # pH 6~9 for all classes: inside -> no effect (I), outside -> 劣V
    assert single_factor_class("ph", value) == expected


@pytest.mark.parametrize(
    ("value", "river", "lake"),
    [
        # river 0.02, 0.1, 0.2, 0.3, 0.4; lake/reservoir 0.01, 0.025, 0.05, 0.1, 0.2
        (0.01, 1, 1),
        (0.02, 1, 2),  # river I; lake: > 0.01, ≤ 0.025 -> II
        (0.05, 2, 3),
        (0.1, 2, 4),
        (0.2, 3, 5),
        (0.3, 4, 6),
        (0.4, 5, 6),
        (0.41, 6, 6),
    ],
)
def test_total_phosphorus_river_vs_lake(value: float, river: int, lake: int) -> None:
    assert single_factor_class("tp", value, "river") == river
    assert single_factor_class("tp", value, "lake") == lake
    assert single_factor_class("tp", value, "reservoir") == lake


def test_total_nitrogen_only_for_lakes() -> None:
    # lake/reservoir TN limits 0.2, 0.5, 1.0, 1.5, 2.0: 1.2 -> IV, 2.1 -> 劣V
    assert single_factor_class("tn", 1.2, "lake") == 4
    assert single_factor_class("tn", 2.1, "reservoir") == 6
    with pytest.raises(IndicatorError, match="no river limit"):
        single_factor_class("tn", 1.2, "river")


@pytest.mark.parametrize(
    ("param", "value", "waterbody"),
    [
        ("turbidity", 1.0, "river"),  # not in Table 1
        ("water_temp", 20.0, "river"),  # item 1 limits a weekly change, not a level
        ("cod", -1.0, "river"),
        ("cod", math.nan, "river"),
        ("cod", math.inf, "river"),
        ("cod", 10.0, "sea"),
    ],
)
def test_single_factor_rejects_bad_input(param: str, value: float, waterbody: str) -> None:
    with pytest.raises(IndicatorError):
        single_factor_class(param, value, waterbody)  # type: ignore[arg-type]


def test_table_holds_all_24_items_but_water_temperature() -> None:
    # GB 3838-2002 Table 1 has 24 items; item 1 (水温) is not a level limit
    assert len(GB3838_TABLE1) == 23
    assert list(GB3838_TABLE1)[:9] == ["ph", "do", "codmn", "cod", "bod5", "nh3n", "tp", "tn", "cu"]


def test_river_overall_class_is_the_worst_factor() -> None:
    # DO 5.5 -> III (≥5); CODMn 5 -> III (≤6); NH3-N 1.2 -> IV (≤1.5); TP 0.25 -> IV (≤0.3)
    # TN 3.0 has no river limit and is ignored
    values = {"do": 5.5, "codmn": 5, "nh3n": 1.2, "tp": 0.25, "tn": 3.0, "ph": 7.4, "water_temp": 18.0}
    result = water_class(values, "river")
    assert result.water_class == 4
    assert result.label == "IV"
    assert (result.status_zh, result.status_en) == ("轻度污染", "lightly polluted")
    # 定类因子: every factor at the worst class, in Table 1 order
    assert result.deciding_factors == ("nh3n", "tp")
    assert dict(result.factor_classes) == {"ph": 1, "do": 3, "codmn": 3, "nh3n": 4, "tp": 4}
    assert dict(result.reference_classes) == {}
    assert result.waterbody == "river"


def test_target_comparison() -> None:
    # same sample: class IV
    result = water_class({"do": 5.5, "codmn": 5, "nh3n": 1.2, "tp": 0.25})
    assert worse_than_target(result, 3)
    assert worse_than_target(result, "III")
    assert not worse_than_target(result, 4)
    assert not worse_than_target(result, "V")
    # factors over target III, worst first: NH3-N and TP are IV; DO and CODMn are III (not over)
    assert factors_worse_than(result, 3) == ("nh3n", "tp")
    assert factors_worse_than(result, 2) == ("nh3n", "tp", "do", "codmn")
    for bad in (0, 7, "VI", True):
        with pytest.raises(IndicatorError):
            worse_than_target(result, bad)


def test_worse_than_v() -> None:
    # CODMn 16 > 15 (V limit) -> 劣V; NH3-N 0.3 -> II
    result = water_class({"codmn": 16, "nh3n": 0.3})
    assert result.water_class == 6
    assert result.label == "劣V"
    assert (result.status_zh, result.status_en) == ("重度污染", "heavily polluted")
    assert result.deciding_factors == ("codmn",)


@pytest.mark.parametrize(
    ("cod", "expected_class", "status_zh"),
    [
        # COD alone: 15 -> I, 15.1 -> III, 25 -> IV, 35 -> V, 41 -> 劣V
        (15, 1, "优"),
        (15.1, 3, "良好"),
        (25, 4, "轻度污染"),
        (35, 5, "中度污染"),
        (41, 6, "重度污染"),
    ],
)
def test_status_words(cod: float, expected_class: int, status_zh: str) -> None:
    result = water_class({"cod": cod})
    assert result.water_class == expected_class
    assert result.label == CLASS_LABELS[expected_class]
    assert result.status_zh == status_zh


def test_class_ii_is_also_excellent() -> None:
    # NH3-N 0.4 -> II (≤0.5) -> 优
    assert water_class({"nh3n": 0.4}).status_zh == "优"


def test_lake_reference_parameters_reported_separately() -> None:
    # lake: TP 0.04 -> III (≤0.05); TN 2.5 -> 劣V (>2.0); fecal coliform 15000 -> IV (≤20000)
    values = {"tp": 0.04, "tn": 2.5, "fecal_coliform": 15000}
    result = water_class(values, "lake")
    # 评价办法: TN and 粪大肠菌群 are reference parameters, outside the overall class
    assert result.water_class == 3
    assert result.deciding_factors == ("tp",)
    assert dict(result.reference_classes) == {"tn": 6, "fecal_coliform": 4}
    # the [M] option counts them
    counted = water_class(values, "lake", include_reference=True)
    assert counted.water_class == 6
    assert counted.deciding_factors == ("tn",)
    assert dict(counted.reference_classes) == {}


def test_river_fecal_coliform_is_reference_too() -> None:
    # river: DO 6.5 -> II; fecal coliform 30000 -> V but reference only
    result = water_class({"do": 6.5, "fecal_coliform": 30000}, "river")
    assert result.water_class == 2
    assert dict(result.reference_classes) == {"fecal_coliform": 5}


def test_same_class_everywhere_lists_every_factor() -> None:
    # all class I: COD 10, NH3-N 0.1, pH 7 -> deciding factors are all of them
    result = water_class({"cod": 10, "nh3n": 0.1, "ph": 7})
    assert result.water_class == 1
    assert result.deciding_factors == ("ph", "cod", "nh3n")


@pytest.mark.parametrize(
    ("values", "waterbody"),
    [
        ({}, "river"),
        ({"tn": 1.0}, "river"),  # nothing assessable in a river
        ({"water_temp": 20.0}, "river"),
        ({"tn": 1.0}, "lake"),  # TN alone is only a reference parameter
        ({"nh3-n": 1.0}, "river"),  # misspelt key
        ({"cod": -3}, "river"),
        ({"cod": 10}, "pond"),
    ],
)
def test_water_class_rejects_bad_input(values: dict[str, float], waterbody: str) -> None:
    with pytest.raises(IndicatorError):
        water_class(values, waterbody)  # type: ignore[arg-type]
