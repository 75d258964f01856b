"""Manhole cover and smart pole alarm conditions (docs/standards.md §6)."""

from __future__ import annotations

import math

import pytest

from alerts.errors import IndicatorError
from alerts.indicators.manhole import (
    GasAlarm,
    WaterLevel,
    battery_low,
    gas_alarms,
    tilt_alarm,
    tilt_alarm_time,
    water_level_state,
)
from alerts.indicators.pole import (
    CabinetAlarm,
    ChargerFault,
    LampFault,
    cabinet_alarms,
    charger_fault,
    lamp_fault,
    pole_tilted,
)

# --- manhole tilt ----------------------------------------------------------------------------------


def test_tilt_sustained_two_seconds_alarms() -> None:
    # over 15° from t=1; t=3 is the first sample ≥ 2 s later (3 - 1 = 2)
    samples = [(0.0, 0.0), (1.0, 16.0), (2.0, 16.0), (3.0, 16.0), (4.0, 16.0)]
    assert tilt_alarm_time(samples) == 3.0
    assert tilt_alarm(samples)


def test_short_tilt_is_a_passing_vehicle() -> None:
    # 1.5 s over 15° (1.0 .. 2.5), then back to 2°
    samples = [(0.0, 0.0), (1.0, 20.0), (2.5, 20.0), (3.0, 2.0)]
    assert tilt_alarm_time(samples) is None
    assert not tilt_alarm(samples)


def test_dip_below_threshold_restarts_the_run() -> None:
    # run 0..1 broken at 1.5 (10°); new run from 2.0, confirmed at 4.0 (4 - 2 = 2)
    samples = [(0.0, 16.0), (1.0, 16.0), (1.5, 10.0), (2.0, 16.0), (3.0, 16.0), (4.0, 16.0)]
    assert tilt_alarm_time(samples) == 4.0


def test_exactly_at_threshold_does_not_count() -> None:
    # "> 15°": 15.0 is not over
    assert tilt_alarm_time([(0.0, 15.0), (5.0, 15.0)]) is None


def test_over_90_alarms_immediately() -> None:
    # > 90° needs no duration
    assert tilt_alarm_time([(0.0, 0.0), (0.5, 95.0)]) == 0.5
    # exactly 90 is only over 15°: needs 2 s
    assert tilt_alarm_time([(0.0, 90.0), (1.0, 90.0)]) is None


def test_tilt_relative_to_background_and_configurable() -> None:
    # installed at 5°: 21° is 16° of tilt; 19° is 14°
    assert tilt_alarm_time([(0, 21.0), (2, 21.0)], background_deg=5.0) == 2
    assert tilt_alarm_time([(0, 19.0), (2, 19.0)], background_deg=5.0) is None
    # negative angles tilt too: |-17 - 0| = 17 > 15
    assert tilt_alarm_time([(0, -17.0), (2, -17.0)]) == 2
    # [M] drksir default: 10°, e.g. with no duration
    assert tilt_alarm_time([(0, 11.0)], threshold_deg=10.0, min_duration_s=0.0) == 0


def test_tilt_rejects_bad_samples() -> None:
    with pytest.raises(IndicatorError, match="time order"):
        tilt_alarm_time([(2.0, 0.0), (1.0, 0.0)])
    with pytest.raises(IndicatorError):
        tilt_alarm_time([(0.0, math.nan)])
    with pytest.raises(IndicatorError):
        tilt_alarm_time([], threshold_deg=100.0)
    assert tilt_alarm_time([]) is None


# --- manhole water, gas, battery -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distance", "state"),
    [
        # defaults [M]: warning ≤ 500 mm, danger ≤ 200 mm from sensor to water
        (2116.0, WaterLevel.NORMAL),  # the EM400-UDL example frame's 2116 mm
        (500.1, WaterLevel.NORMAL),
        (500.0, WaterLevel.WARNING),
        (200.1, WaterLevel.WARNING),
        (200.0, WaterLevel.DANGER),
        (0.0, WaterLevel.DANGER),
    ],
)
def test_water_level_state(distance: float, state: WaterLevel) -> None:
    assert water_level_state(distance) is state


def test_water_level_configurable_and_validated() -> None:
    assert water_level_state(800, warning_mm=1000, danger_mm=300) is WaterLevel.WARNING
    with pytest.raises(IndicatorError):
        water_level_state(-1)
    with pytest.raises(IndicatorError):
        water_level_state(100, warning_mm=100, danger_mm=200)


def test_gas_alarms() -> None:
    # defaults [M]: CH4 25 %LEL, H2S 10 mg/m³; reaching the set point alarms
    assert gas_alarms(ch4_pct_lel=24.9, h2s_mg_m3=9.9) == ()
    assert gas_alarms(ch4_pct_lel=25.0) == (GasAlarm.CH4,)
    assert gas_alarms(h2s_mg_m3=10.0) == (GasAlarm.H2S,)
    assert gas_alarms(ch4_pct_lel=40.0, h2s_mg_m3=15.0) == (GasAlarm.CH4, GasAlarm.H2S)
    assert gas_alarms() == ()
    assert gas_alarms(ch4_pct_lel=15.0, ch4_limit_pct_lel=10.0) == (GasAlarm.CH4,)
    with pytest.raises(IndicatorError):
        gas_alarms(ch4_pct_lel=-1.0)


def test_battery_low() -> None:
    # default [M]: ≤ 20 %
    assert battery_low(20.0)
    assert not battery_low(20.5)
    assert not battery_low(92)  # the EM400-UDL example frame's 92 %
    assert battery_low(30, threshold_pct=30)
    for bad in (-1, 101, math.nan):
        with pytest.raises(IndicatorError):
            battery_low(bad)


# --- pole ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("is_on", "current", "fault"),
    [
        # defaults [M]: on needs ≥ 0.05 A; off allows ≤ 0.05 A
        (True, 0.45, None),  # ~100 W LED at 220 V
        (True, 0.05, None),
        (True, 0.01, LampFault.NO_CURRENT),
        (True, 0.0, LampFault.NO_CURRENT),
        (False, 0.0, None),
        (False, 0.05, None),
        (False, 0.3, LampFault.CURRENT_WHEN_OFF),
    ],
)
def test_lamp_fault(is_on: bool, current: float, fault: LampFault | None) -> None:
    assert lamp_fault(is_on, current) is fault


def test_lamp_fault_rejects_bad_current() -> None:
    with pytest.raises(IndicatorError):
        lamp_fault(True, -0.1)
    with pytest.raises(IndicatorError):
        lamp_fault(True, math.nan)


def test_pole_tilt() -> None:
    # default [M] 5°: |5 - 0| is not over, |5.1 - 0| is; relative to the installed angle
    assert not pole_tilted(5.0)
    assert pole_tilted(5.1)
    assert not pole_tilted(6.0, background_deg=1.5)  # 4.5°
    assert pole_tilted(3.5, threshold_deg=3.0)
    with pytest.raises(IndicatorError):
        pole_tilted(math.inf)


def test_cabinet_alarms() -> None:
    assert cabinet_alarms() == ()
    assert cabinet_alarms(door_open=True) == (CabinetAlarm.DOOR_OPEN,)
    # an authorised maintenance visit opens the door, but water is still an alarm
    assert cabinet_alarms(door_open=True, water_ingress=True, maintenance=True) == (CabinetAlarm.WATER_INGRESS,)
    assert cabinet_alarms(door_open=True, water_ingress=True, smoke=True) == (
        CabinetAlarm.DOOR_OPEN,
        CabinetAlarm.WATER_INGRESS,
        CabinetAlarm.SMOKE,
    )


def test_charger_fault() -> None:
    assert charger_fault("fault") is ChargerFault.REPORTED
    # default [M]: idle with > 0.5 A is a stuck contactor
    assert charger_fault("idle", 0.5) is None
    assert charger_fault("idle", 6.0) is ChargerFault.CURRENT_WHEN_IDLE
    # low current while charging is the vehicle tapering, not a fault
    assert charger_fault("charging", 0.1) is None
    assert charger_fault("charging") is None
    with pytest.raises(IndicatorError):
        charger_fault("exploded")
    with pytest.raises(IndicatorError):
        charger_fault("idle", -1.0)
