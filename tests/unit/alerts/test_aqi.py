"""AQI (HJ 633-2012 / HJ 633-2026) with examples computed by hand from the tables.

Formula: IAQI = (IAQI_Hi − IAQI_Lo) / (BP_Hi − BP_Lo) × (C − BP_Lo) + IAQI_Lo, rounded up.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from alerts.errors import IndicatorError
from alerts.indicators.aqi import (
    HJ633_2012,
    HJ633_2026,
    LEVELS,
    aqi,
    hourly_means,
    iaqi,
    level_for,
    o3_8h_moving_mean,
    rolling_24h_mean,
)

V2012 = "HJ633-2012"
V2026 = "HJ633-2026"


# --- iaqi: PM 2012 vs 2026 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concentration", "version", "expected"),
    [
        # (150-100)/(115-75)*(80-75)+100 = 106.25 -> ceil 107
        (80, V2012, 107),
        # (150-100)/(115-60)*(80-60)+100 = 118.18… -> ceil 119
        (80, V2026, 119),
        # 75 is the 2012 IAQI-100 breakpoint -> exactly 100
        (75, V2012, 100),
        # (150-100)/(115-60)*(75-60)+100 = 113.63… -> ceil 114
        (75, V2026, 114),
        # (100-50)/(75-35)*(60-35)+50 = 81.25 -> ceil 82
        (60, V2012, 82),
        # 60 is the 2026 IAQI-100 breakpoint -> exactly 100
        (60, V2026, 100),
        # 35 is the IAQI-50 breakpoint in both versions
        (35, V2012, 50),
        (35, V2026, 50),
        # (50-0)/(35-0)*(10-0)+0 = 14.28… -> ceil 15
        (10, V2026, 15),
        (0, V2026, 0),
    ],
)
def test_pm25_24h_2012_vs_2026(concentration: float, version: str, expected: int) -> None:
    assert iaqi("pm25", concentration, "24h", version) == expected


@pytest.mark.parametrize(
    ("concentration", "version", "expected"),
    [
        # (100-50)/(150-50)*(120-50)+50 = 85 exactly
        (120, V2012, 85),
        # 120 is the 2026 IAQI-100 breakpoint
        (120, V2026, 100),
        # (150-100)/(250-150)*(200-150)+100 = 125 exactly
        (200, V2012, 125),
        # (150-100)/(250-120)*(200-120)+100 = 130.76… -> ceil 131
        (200, V2026, 131),
    ],
)
def test_pm10_24h_2012_vs_2026(concentration: float, version: str, expected: int) -> None:
    assert iaqi("pm10", concentration, "24h", version) == expected


def test_pm_hourly_rows_exist_only_in_2026() -> None:
    # 2026 real-time PM uses hourly means with the 24 h breakpoints:
    # (150-100)/(115-60)*(80-60)+100 = 118.18… -> 119
    assert iaqi("pm25", 80, "1h", V2026) == 119
    with pytest.raises(IndicatorError, match="no '1h' IAQI"):
        iaqi("pm25", 80, "1h", V2012)


def test_default_version_is_2026() -> None:
    # 2026: (150-100)/(115-60)*(80-60)+100 -> 119, not the 2012 value 107
    assert iaqi("pm25", 80, "24h") == 119


@pytest.mark.parametrize("version", [V2012, V2026])
def test_so2_24h_65_is_58(version: str) -> None:
    # docs/standards.md §3.2: (100-50)/(150-50)*(65-50)+50 = 57.5 -> ceil 58
    assert iaqi("so2", 65, "24h", version) == 58


@pytest.mark.parametrize(
    ("pollutant", "period", "concentration", "expected"),
    [
        # (100-50)/(75-35)*(75-35)+50 = 100; a float on a breakpoint must not ceil up
        ("pm25", "24h", 75.0, 100),
        # CO 1h: (300-200)/(90-60)*(65.4-60)+200 = 218 exactly; float arithmetic gives 218.00000000000003
        ("co", "1h", 65.4, 218),
        # CO 1h: (50-0)/(5-0)*(4.4-0)+0 = 44 exactly
        ("co", "1h", 4.4, 44),
        # CO 1h: (100-50)/(10-5)*(5.7-5)+50 = 57 exactly
        ("co", "1h", 5.7, 57),
        # CO 24h: (100-50)/(4-2)*(2.04-2)+50 = 51 exactly
        ("co", "24h", 2.04, 51),
        # NO2 24h: (100-50)/(80-40)*(40.8-40)+50 = 51 exactly
        ("no2", "24h", 40.8, 51),
    ],
)
def test_exact_integer_results_do_not_ceil_up(pollutant: str, period: str, concentration: float, expected: int) -> None:
    assert iaqi(pollutant, concentration, period, V2012) == expected


def test_decimal_and_fraction_inputs_are_exact() -> None:
    # CO 1h 65.4: (300-200)/(90-60)*(65.4-60)+200 = 218
    assert iaqi("co", Decimal("65.4"), "1h") == 218
    assert iaqi("co", Fraction(327, 5), "1h") == 218
    # numpy floats are floats: same decimal, same answer
    assert iaqi("co", np.float64(65.4), "1h") == 218


def test_pollutant_name_spellings() -> None:
    # (150-100)/(115-75)*(80-75)+100 = 106.25 -> 107
    assert iaqi("PM2.5", 80, "24h", V2012) == 107
    assert iaqi("pm_25", 80, "24h", V2012) == 107


@pytest.mark.parametrize(
    ("pollutant", "period", "concentration"),
    [
        ("pm25", "24h", 500),  # top breakpoint -> exactly 500
        ("pm25", "24h", 600),  # above the top -> capped at 500
        ("pm10", "24h", 601),
        ("no2", "1h", 5000),
        ("co", "24h", 60.0001),
        ("o3", "1h", 1201),
        ("so2", "24h", 9999),
    ],
)
def test_above_top_breakpoint_caps_at_500(pollutant: str, period: str, concentration: float) -> None:
    assert iaqi(pollutant, concentration, period, V2012) == 500
    assert iaqi(pollutant, concentration, period, V2026) == 500


def test_so2_1h_above_800() -> None:
    # 800 is the last SO2 1h breakpoint (IAQI 200) in both versions
    assert iaqi("so2", 800, "1h", V2012) == 200
    assert iaqi("so2", 800, "1h", V2026) == 200
    # (200-150)/(800-650)*(700-650)+150 = 166.67 -> 167
    assert iaqi("so2", 700, "1h", V2012) == 167
    # 2012 Table 1 note (2): no 1h IAQI above 800; the caller uses the 24h value
    assert iaqi("so2", 801, "1h", V2012) is None
    # 2026 as read by aqi-hub [M]: 200
    assert iaqi("so2", 801, "1h", V2026) == 200
    # the documented option: 2026 breakpoints with the 2012 reading
    strict = dataclasses.replace(HJ633_2026, over_top_iaqi={("so2", "1h"): None, ("o3", "8h"): None})
    assert iaqi("so2", 801, "1h", strict) is None


def test_o3_8h_above_800() -> None:
    # 800 is the last O3 8h breakpoint (IAQI 300)
    assert iaqi("o3", 800, "8h", V2012) == 300
    # (150-100)/(215-160)*(180-160)+100 = 118.18 -> 119
    assert iaqi("o3", 180, "8h", V2012) == 119
    # 2012 Table 1 note (3): no 8h IAQI above 800; the caller uses the 1h value
    assert iaqi("o3", 801, "8h", V2012) is None
    # 2026 as read by aqi-hub [M]: 300
    assert iaqi("o3", 801, "8h", V2026) == 300


@pytest.mark.parametrize("bad", [-0.1, -1, math.nan, math.inf, True, "12"])
def test_bad_concentration_rejected(bad: object) -> None:
    with pytest.raises(IndicatorError):
        iaqi("pm25", bad, "24h")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pollutant", "period", "version"),
    [("pm1", "24h", V2026), ("o3", "24h", V2026), ("so2", "8h", V2012), ("pm25", "24h", "HJ633-1999")],
)
def test_unknown_pollutant_period_or_version(pollutant: str, period: str, version: str) -> None:
    with pytest.raises(IndicatorError):
        iaqi(pollutant, 10, period, version)


def test_standard_validates_breakpoints() -> None:
    with pytest.raises(IndicatorError, match="strictly increase"):
        dataclasses.replace(HJ633_2012, breakpoints={("pm25", "24h"): (0, 35, 35, 115)})
    with pytest.raises(IndicatorError, match="not truncated"):
        dataclasses.replace(HJ633_2012, over_top_iaqi={("pm25", "24h"): 300})
    # a truncated row without a fallback average must name an IAQI
    short = {**HJ633_2012.breakpoints, ("no2", "1h"): (0, 100, 200)}
    with pytest.raises(IndicatorError, match="no fallback"):
        dataclasses.replace(HJ633_2012, breakpoints=short, over_top_iaqi={("no2", "1h"): None})
    custom = dataclasses.replace(HJ633_2012, breakpoints=short, over_top_iaqi={("no2", "1h"): 100})
    # NO2 1h 250 is above the shortened row's top (200) -> the configured 100
    assert iaqi("no2", 250, "1h", custom) == 100


# --- aqi -----------------------------------------------------------------------------------------


def test_daily_2012_with_exceeding_pollutants() -> None:
    # pm25 24h 80: (150-100)/(115-75)*(80-75)+100 = 106.25 -> 107
    # pm10 24h 160: (150-100)/(250-150)*(160-150)+100 = 105
    # no2 24h 40: breakpoint -> 50
    result = aqi({"pm25": 80, "pm10": 160, "no2": 40}, V2012, mode="daily")
    assert result.aqi == 107
    assert result.level == 3
    assert (result.category_zh, result.category_en) == ("轻度污染", "Lightly polluted")
    assert (result.colour_hex, result.colour_rgb) == ("#FF7E00", (255, 126, 0))
    assert result.primary_pollutants == ("pm25",)
    # 超标污染物: IAQI > 100, in HJ 633 order (so2, no2, pm10, co, o3, pm25)
    assert result.exceeding_pollutants == ("pm10", "pm25")
    assert dict(result.iaqi) == {("no2", "24h"): 50, ("pm10", "24h"): 105, ("pm25", "24h"): 107}
    assert (result.version, result.mode) == (V2012, "daily")


def test_daily_2026_same_air_is_worse_and_has_no_exceeding_list() -> None:
    # pm25 24h 80: (150-100)/(115-60)*(80-60)+100 = 118.18 -> 119
    # pm10 24h 160: (150-100)/(250-120)*(160-120)+100 = 115.38 -> 116
    result = aqi({"pm25": 80, "pm10": 160, "no2": 40}, V2026, mode="daily")
    assert result.aqi == 119
    assert result.primary_pollutants == ("pm25",)
    assert result.exceeding_pollutants is None


def test_tied_primary_pollutants_all_listed() -> None:
    # pm25 24h 75 -> 100 (breakpoint); pm10 24h 150 -> 100 (breakpoint)
    result = aqi({"pm25": 75, "pm10": 150}, V2012, mode="daily")
    assert result.aqi == 100
    assert result.level == 2
    assert result.category_zh == "良"
    assert result.primary_pollutants == ("pm10", "pm25")
    assert result.exceeding_pollutants == ()


def test_no_primary_pollutant_when_aqi_at_most_50() -> None:
    # pm25 35 -> 50, pm10 50 -> 50, so2 24h 20: (50-0)/(50-0)*20 = 20
    result = aqi({"pm25": 35, "pm10": 50, "so2": 20}, V2012, mode="daily")
    assert result.aqi == 50
    assert result.level == 1
    assert result.colour_hex == "#00E400"
    assert result.primary_pollutants == ()


def test_primary_pollutant_from_aqi_51() -> None:
    # no2 24h 40.8: (100-50)/(80-40)*(40.8-40)+50 = 51; pm25 24h 10: (50/35)*10 = 14.28 -> 15
    result = aqi({"no2": 40.8, "pm25": 10}, V2026, mode="daily")
    assert result.aqi == 51
    assert result.primary_pollutants == ("no2",)


def test_hourly_2026_bare_names() -> None:
    # pm25 1h 80: (150-100)/(115-60)*(80-60)+100 = 118.18 -> 119
    # pm10 1h 200: (150-100)/(250-120)*(200-120)+100 = 130.77 -> 131
    # o3 1h 200 -> 100 (breakpoint); co 1h 5.7: (100-50)/(10-5)*0.7+50 = 57
    # so2 1h 150 -> 50 (breakpoint); no2 1h 100 -> 50 (breakpoint)
    result = aqi({"pm25": 80, "pm10": 200, "o3": 200, "co": 5.7, "so2": 150, "no2": 100})
    assert result.aqi == 131
    assert result.primary_pollutants == ("pm10",)
    assert result.iaqi[("pm25", "1h")] == 119
    assert result.iaqi[("co", "1h")] == 57
    assert result.mode == "hourly"


def test_hourly_2012_so2_above_800_uses_24h() -> None:
    # so2 1h 900: no 1h IAQI (Table 1 note (2))
    # so2 24h 500: (200-150)/(800-475)*(500-475)+150 = 153.85 -> 154
    # pm25 24h 40: (100-50)/(75-35)*(40-35)+50 = 56.25 -> 57
    result = aqi({("so2", "1h"): 900, ("so2", "24h"): 500, ("pm25", "24h"): 40}, V2012)
    assert result.aqi == 154
    assert result.primary_pollutants == ("so2",)
    assert dict(result.iaqi) == {("so2", "24h"): 154, ("pm25", "24h"): 57}


def test_hourly_2012_so2_24h_ignored_while_1h_has_an_iaqi() -> None:
    # so2 1h 100: (50-0)/(150-0)*100 = 33.3 -> 34; the 24h value is only a fallback
    result = aqi({("so2", "1h"): 100, ("so2", "24h"): 500}, V2012)
    assert result.aqi == 34
    assert dict(result.iaqi) == {("so2", "1h"): 34}


def test_hourly_2012_so2_above_800_without_24h_is_an_error() -> None:
    with pytest.raises(IndicatorError, match="give so2 24h"):
        aqi({("so2", "1h"): 900}, V2012)


def test_hourly_2026_so2_above_800_is_200() -> None:
    # aqi-hub reading [M]: SO2 1h > 800 -> 200, level 4 (151-200)
    result = aqi({("so2", "1h"): 900}, V2026)
    assert (result.aqi, result.level, result.colour_hex) == (200, 4, "#FF0000")


def test_daily_2012_o3_8h_above_800_uses_1h() -> None:
    # o3 8h 850: no 8h IAQI (Table 1 note (3))
    # o3 1h 900: (400-300)/(1000-800)*(900-800)+300 = 350
    result = aqi({("o3", "8h"): 850, ("o3", "1h"): 900}, V2012, mode="daily")
    assert result.aqi == 350
    assert result.level == 6
    assert result.colour_hex == "#7E0023"
    assert result.primary_pollutants == ("o3",)
    assert dict(result.iaqi) == {("o3", "1h"): 350}


def test_daily_2012_o3_8h_above_800_without_1h_is_an_error() -> None:
    with pytest.raises(IndicatorError, match="give o3 1h"):
        aqi({"o3": 850}, V2012, mode="daily")


def test_daily_2026_o3_8h_above_800_is_300() -> None:
    # aqi-hub reading [M]: O3 8h > 800 -> 300, level 5 (201-300)
    result = aqi({"o3": 850}, V2026, mode="daily")
    assert (result.aqi, result.level, result.colour_hex) == (300, 5, "#99004C")


def test_iaqi_by_pollutant_takes_the_higher_o3_average() -> None:
    # o3 1h 250: (150-100)/(300-200)*(250-200)+100 = 125
    # o3 8h 180: (150-100)/(215-160)*(180-160)+100 = 118.18 -> 119
    result = aqi({("o3", "1h"): 250, ("o3", "8h"): 180}, V2012)
    assert result.aqi == 125
    assert dict(result.iaqi_by_pollutant) == {"o3": 125}
    assert result.band.grade_zh == "三级"


@pytest.mark.parametrize(
    ("concentrations", "version", "mode"),
    [
        ({}, V2026, "hourly"),
        ({("pm25", "24h"): 30}, V2026, "hourly"),  # 2026 real-time PM uses 1h means
        ({("pm25", "1h"): 30}, V2012, "hourly"),  # 2012 has no 1h PM row
        ({("so2", "1h"): 30}, V2026, "daily"),  # 1h SO2 is real-time only (note (1))
        ({"pm25": 10, ("pm25", "1h"): 10}, V2026, "hourly"),  # the same average twice
        ({"pm25": 10}, V2026, "weekly"),
        ({"pm25": 10}, "HJ633-1999", "hourly"),
        ({("pm25",): 10}, V2026, "hourly"),
        ({"pm25": -1}, V2026, "hourly"),
        ({("so2", "24h"): 30}, V2012, "hourly"),  # a fallback-only average alone
    ],
)
def test_aqi_rejects_bad_input(concentrations: dict, version: str, mode: str) -> None:
    with pytest.raises(IndicatorError):
        aqi(concentrations, version, mode=mode)  # type: ignore[arg-type]


def test_result_is_immutable() -> None:
    result = aqi({"pm25": 10})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.aqi = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.iaqi[("pm25", "1h")] = 1  # type: ignore[index]


# --- levels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "level", "category_zh", "colour_hex", "colour_rgb"),
    [
        (0, 1, "优", "#00E400", (0, 228, 0)),
        (50, 1, "优", "#00E400", (0, 228, 0)),
        (51, 2, "良", "#FFFF00", (255, 255, 0)),
        (100, 2, "良", "#FFFF00", (255, 255, 0)),
        (101, 3, "轻度污染", "#FF7E00", (255, 126, 0)),
        (150, 3, "轻度污染", "#FF7E00", (255, 126, 0)),
        (151, 4, "中度污染", "#FF0000", (255, 0, 0)),
        (200, 4, "中度污染", "#FF0000", (255, 0, 0)),
        (201, 5, "重度污染", "#99004C", (153, 0, 76)),
        (300, 5, "重度污染", "#99004C", (153, 0, 76)),
        (301, 6, "严重污染", "#7E0023", (126, 0, 35)),
        (500, 6, "严重污染", "#7E0023", (126, 0, 35)),
    ],
)
def test_level_boundaries_and_colours(
    value: int, level: int, category_zh: str, colour_hex: str, colour_rgb: tuple[int, int, int]
) -> None:
    band = level_for(value)
    assert (band.level, band.category_zh, band.colour_hex, band.colour_rgb) == (
        level,
        category_zh,
        colour_hex,
        colour_rgb,
    )


def test_level_table_is_consistent() -> None:
    # hex and rgb name the same colour, and the ranges tile 0..∞
    for band in LEVELS:
        assert band.colour_hex == "#{:02X}{:02X}{:02X}".format(*band.colour_rgb)
    for lower, upper in itertools.pairwise(LEVELS):
        assert lower.aqi_max is not None
        assert upper.aqi_min == lower.aqi_max + 1
    assert LEVELS[-1].aqi_max is None


def test_level_for_rounds_fractions_up_and_rejects_bad_values() -> None:
    # 50.2 rounds up to 51 -> level 2
    assert level_for(50.2).level == 2
    assert level_for(np.float64(120.0)).level == 3
    for bad in (-1, math.nan, True):
        with pytest.raises(IndicatorError):
            level_for(bad)


# --- averages ------------------------------------------------------------------------------------


def _hours(start: str, offsets: list[int]) -> np.ndarray:
    return np.datetime64(start, "h") + np.array(offsets, dtype="timedelta64[h]")


def test_hourly_means_bins_by_hour_and_skips_nan() -> None:
    times = np.array(
        ["2026-03-01T01:30", "2026-03-01T00:10", "2026-03-01T00:40", "2026-03-01T01:05", "2026-03-01T03:00"],
        dtype="datetime64[m]",
    )
    values = np.array([math.nan, 10.0, 20.0, 30.0, 50.0])
    hours, means = hourly_means(times, values)
    # hour 00: (10+20)/2 = 15; hour 01: 30 (the NaN is skipped); hour 03: 50; hour 02: no data
    assert hours.tolist() == _hours("2026-03-01T00", [0, 1, 3]).tolist()
    np.testing.assert_allclose(means, [15.0, 30.0, 50.0])
    # min_samples=2: only hour 00 has two finite readings
    hours2, means2 = hourly_means(times, values, min_samples=2)
    assert hours2.tolist() == _hours("2026-03-01T00", [0]).tolist()
    np.testing.assert_allclose(means2, [15.0])


def test_hourly_means_rejects_bad_arrays() -> None:
    with pytest.raises(IndicatorError):
        hourly_means(np.array([1, 2]), np.array([1.0, 2.0]))
    with pytest.raises(IndicatorError):
        hourly_means(np.array(["2026-03-01T00"], dtype="datetime64[h]"), np.array([1.0, 2.0]))
    with pytest.raises(IndicatorError):
        hourly_means(np.array(["2026-03-01T00"], dtype="datetime64[h]"), np.array([1.0]), min_samples=0)


def test_o3_8h_moving_mean_full_and_partial_windows() -> None:
    # hours 00..07 with 100, 110, …, 170
    hours = _hours("2026-07-01T00", list(range(8)))
    values = np.arange(100.0, 180.0, 10.0)
    ends, means = o3_8h_moving_mean(hours, values)
    assert ends.tolist() == hours.tolist()
    # hours 00..04 have ≤ 5 of 8 hours in their window -> invalid
    assert np.isnan(means[:5]).all()
    # hour 05: hours 00..05 = 6 of 8 -> (100+110+120+130+140+150)/6 = 750/6 = 125
    assert means[5] == pytest.approx(125.0)
    # hour 07: all 8 -> (100+…+170)/8 = 1080/8 = 135
    assert means[7] == pytest.approx(135.0)


def test_o3_8h_moving_mean_with_missing_hours() -> None:
    # hours 02 (120) and 03 (130) missing, hour 08 = 180
    offsets = [0, 1, 4, 5, 6, 7, 8]
    hours = _hours("2026-07-01T00", offsets)
    values = np.array([100.0, 110.0, 140.0, 150.0, 160.0, 170.0, 180.0])
    ends, means = o3_8h_moving_mean(hours, values)
    # the output grid fills the gap
    assert ends.tolist() == _hours("2026-07-01T00", list(range(9))).tolist()
    # hour 07: 00,01,04,05,06,07 = 6 valid -> (100+110+140+150+160+170)/6 = 830/6 = 138.33
    assert means[7] == pytest.approx(830 / 6)
    # hour 08: 01,04,05,06,07,08 = 6 valid -> (110+140+150+160+170+180)/6 = 910/6 = 151.67
    assert means[8] == pytest.approx(910 / 6)
    # hour 06: 00,01,04,05,06 = 5 valid < 6 -> NaN
    assert np.isnan(means[6])
    # a NaN hourly mean counts as missing: drop hour 07 too -> hour 08 has 5 -> NaN
    values_nan = values.copy()
    values_nan[5] = math.nan
    _, means_nan = o3_8h_moving_mean(hours, values_nan)
    assert np.isnan(means_nan[8])
    # the [M] validity count is a parameter: 5 of 8 accepted
    # hour 08 -> (110+140+150+160+180)/5 = 740/5 = 148
    _, means_5 = o3_8h_moving_mean(hours, values_nan, min_valid=5)
    assert means_5[8] == pytest.approx(148.0)


def test_rolling_24h_mean_needs_20_hours() -> None:
    # hours 00..23 with values 1..24 -> mean at hour 23 = (1+…+24)/24 = 300/24 = 12.5
    hours = _hours("2026-03-01T00", list(range(24)))
    values = np.arange(1.0, 25.0)
    _, means = rolling_24h_mean(hours, values)
    assert means[23] == pytest.approx(12.5)
    assert np.isnan(means[18])  # only 19 hours so far
    assert means[19] == pytest.approx(10.5)  # hours 00..19: (1+…+20)/20 = 210/20 = 10.5
    # drop 4 hours (values 1..4): 20 left -> (300-10)/20 = 14.5
    _, means20 = rolling_24h_mean(hours[4:], values[4:])
    assert means20[-1] == pytest.approx(14.5)
    # drop 5 hours: 19 left -> invalid
    _, means19 = rolling_24h_mean(hours[5:], values[5:])
    assert np.isnan(means19[-1])


def test_moving_means_reject_bad_input() -> None:
    hours = _hours("2026-03-01T00", [0, 0])
    with pytest.raises(IndicatorError, match="unique"):
        o3_8h_moving_mean(hours, np.array([1.0, 2.0]))
    with pytest.raises(IndicatorError):
        o3_8h_moving_mean(_hours("2026-03-01T00", [0]), np.array([1.0]), min_valid=9)
    with pytest.raises(IndicatorError):
        rolling_24h_mean(np.array([0, 1]), np.array([1.0, 2.0]))


def test_moving_means_of_nothing_are_empty() -> None:
    ends, means = o3_8h_moving_mean(np.array([], dtype="datetime64[h]"), np.array([]))
    assert ends.size == 0
    assert means.size == 0


def test_hourly_to_8h_pipeline() -> None:
    # two readings per hour at :15 and :45 for 8 hours: (v, v+2) -> hourly mean v+1
    base = np.datetime64("2026-07-01T00:00", "m")
    times = np.concatenate([base + np.arange(8) * 60 + 15, base + np.arange(8) * 60 + 45])
    values = np.concatenate([np.arange(8) * 10.0 + 99.0, np.arange(8) * 10.0 + 101.0])
    hours, means = hourly_means(times, values)
    np.testing.assert_allclose(means, np.arange(100.0, 180.0, 10.0))
    _, o3_8h = o3_8h_moving_mean(hours, means)
    # (100+…+170)/8 = 135, in the 100..160 segment of O3 8h:
    # (100-50)/(160-100)*(135-100)+50 = 79.17 -> 80
    assert o3_8h[-1] == pytest.approx(135.0)
    assert iaqi("o3", float(o3_8h[-1]), "8h") == 80


def test_package_exports_without_hiding_the_module() -> None:
    import alerts.indicators as package
    import alerts.indicators.aqi as module

    # the package re-exports aqi() as compute_aqi so that the submodule stays reachable
    assert package.aqi is module
    assert package.compute_aqi is aqi
    assert set(package.__all__) <= set(dir(package))
