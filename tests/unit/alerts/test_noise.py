"""GB 3096-2008 Table 1 noise limits and the night Lmax rule."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time

import pytest

from alerts.errors import IndicatorError
from alerts.indicators.noise import NOISE_LIMITS, assess_noise, is_daytime, noise_limit


@pytest.mark.parametrize(
    ("zone", "day", "night"),
    [
        # GB 3096-2008 Table 1, dB(A)
        ("0", 50, 40),
        ("1", 55, 45),
        ("2", 60, 50),
        ("3", 65, 55),
        ("4a", 70, 55),
        ("4b", 70, 60),
    ],
)
def test_limits_per_zone(zone: str, day: int, night: int) -> None:
    assert noise_limit(zone, "day") == day
    assert noise_limit(zone, "night") == night
    assert NOISE_LIMITS[zone] == (day, night)


@pytest.mark.parametrize(
    ("zone", "day", "night"),
    [("0", 50, 40), ("1", 55, 45), ("2", 60, 50), ("3", 65, 55), ("4a", 70, 55), ("4b", 70, 60)],
)
def test_each_zone_day_and_night_boundaries(zone: str, day: int, night: int) -> None:
    # at the limit complies; 0.1 dB above it exceeds by 0.1
    at_limit = assess_noise(zone, ld=day, ln=night)
    assert at_limit.compliant
    over = assess_noise(zone, ld=day + 0.1, ln=night + 0.1)
    assert [(e.metric, e.threshold_db, e.excess_db) for e in over.exceedances] == [
        ("ld", day, pytest.approx(0.1)),
        ("ln", night, pytest.approx(0.1)),
    ]


def test_int_zone_and_case() -> None:
    assert noise_limit(1, "day") == 55
    assert noise_limit("4A", "night") == 55


def test_4a_vs_4b_at_night() -> None:
    # Ln 58: 4a night limit 55 -> over by 58-55 = 3; 4b night limit 60 -> complies
    in_4a = assess_noise("4a", ln=58)
    assert [(e.metric, e.value_db, e.threshold_db, e.excess_db) for e in in_4a.exceedances] == [("ln", 58.0, 55.0, 3.0)]
    assert assess_noise("4b", ln=58).compliant
    # same day limit, 70: Ld 72 -> over by 2 in both
    assert assess_noise("4a", ld=72).exceedances[0].excess_db == 2.0
    assert assess_noise("4b", ld=72).exceedances[0].excess_db == 2.0


def test_excess_is_the_decimal_difference() -> None:
    # zone 2 day 60: Ld 60.3 -> 0.3 exactly (float subtraction gives 0.29999999999999716)
    result = assess_noise("2", ld=60.3)
    assert result.exceedances[0].excess_db == 0.3


def test_night_lmax_more_than_15_over_the_night_limit() -> None:
    # zone 2 night limit 50 -> Lmax may reach 50 + 15 = 65
    assert assess_noise("2", night_lmax=65).compliant
    # 65.5 - (50 + 15) = 0.5
    result = assess_noise("2", night_lmax=65.5)
    (exceedance,) = result.exceedances
    assert (exceedance.metric, exceedance.threshold_db, exceedance.excess_db) == ("night_lmax", 65.0, 0.5)
    # zone 1 night 45: Lmax 62 -> 62 - 60 = 2
    assert assess_noise("1", night_lmax=62).exceedances[0].excess_db == 2.0
    # 4b night 60: Lmax 75 complies, 4a night 55: Lmax 75 - 70 = 5
    assert assess_noise("4b", night_lmax=75).compliant
    assert assess_noise("4a", night_lmax=75).exceedances[0].excess_db == 5.0
    # the [M] margin is a parameter: 10 dB -> zone 2 threshold 60, Lmax 65 over by 5
    assert assess_noise("2", night_lmax=65, night_lmax_margin_db=10).exceedances[0].excess_db == 5.0


def test_all_three_at_once() -> None:
    # zone 1: Ld 57 - 55 = 2; Ln 47 - 45 = 2; Lmax 61 - (45 + 15) = 1
    result = assess_noise("1", ld=57, ln=47, night_lmax=61)
    assert [(e.metric, e.excess_db) for e in result.exceedances] == [
        ("ld", 2.0),
        ("ln", 2.0),
        ("night_lmax", 1.0),
    ]
    assert not result.compliant
    assert (result.day_limit_db, result.night_limit_db) == (55, 45)


@pytest.mark.parametrize(
    ("kwargs", "zone"),
    [
        ({}, "1"),
        ({"ld": 50}, "5"),
        ({"ld": 50}, "4"),
        ({"ld": math.nan}, "1"),
        ({"ln": "50"}, "1"),
    ],
)
def test_assess_noise_rejects_bad_input(kwargs: dict, zone: str) -> None:
    with pytest.raises(IndicatorError):
        assess_noise(zone, **kwargs)


def test_noise_limit_rejects_bad_period() -> None:
    with pytest.raises(IndicatorError):
        noise_limit("1", "evening")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("clock", "day"),
    [
        (time(6, 0), True),  # 06:00 starts the day
        (time(12, 0), True),
        (time(21, 59, 59), True),
        (time(22, 0), False),  # 22:00 starts the night
        (time(0, 0), False),
        (time(5, 59), False),
    ],
)
def test_is_daytime_default_hours(clock: time, day: bool) -> None:
    assert is_daytime(clock) is day
    assert is_daytime(datetime(2026, 3, 1, clock.hour, clock.minute, clock.second)) is day


def test_is_daytime_configurable() -> None:
    # a city that sets 07:00-23:00 as day
    assert not is_daytime(time(6, 30), day_start=time(7), day_end=time(23))
    assert is_daytime(time(22, 30), day_start=time(7), day_end=time(23))
    # an aware datetime is read as local wall-clock time
    assert is_daytime(datetime(2026, 3, 1, 10, tzinfo=UTC))
    # a period across midnight also works
    assert is_daytime(time(1), day_start=time(20), day_end=time(4))
    assert not is_daytime(time(5), day_start=time(20), day_end=time(4))
    with pytest.raises(IndicatorError):
        is_daytime(time(1), day_start=time(6), day_end=time(6))
