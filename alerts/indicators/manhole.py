"""Smart manhole cover (智能井盖) alarm conditions.

No national standard fixes these thresholds; the defaults come from vendor
documentation collected in ``docs/standards.md`` §6.1 and
are all configurable. Every default below is [M] unless stated otherwise.

* Tilt: |angle − background| over 15° for ≥ 2 s (shorter is a passing
  vehicle), or over 90° at once (cover lifted or flipped).
* Water level: ultrasonic distance from the sensor under the cover down to
  the water surface; a smaller distance means higher water.
* Gas: CH4 in %LEL, H2S in mg/m³.
* Battery: percent of capacity.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable

from alerts.errors import IndicatorError

__all__ = [
    "BATTERY_LOW_PCT",
    "CH4_ALARM_PCT_LEL",
    "H2S_ALARM_MG_M3",
    "TILT_IMMEDIATE_DEG",
    "TILT_MIN_DURATION_S",
    "TILT_THRESHOLD_DEG",
    "WATER_DANGER_DISTANCE_MM",
    "WATER_WARNING_DISTANCE_MM",
    "GasAlarm",
    "WaterLevel",
    "battery_low",
    "gas_alarms",
    "tilt_alarm",
    "tilt_alarm_time",
    "water_level_state",
]

# [M] docs/standards.md §6.1 (jishuzhan article): > 15° sustained ≥ 2 s; one
# vendor (drksir) defaults to 10°, another alarms at > 5° — hence parameters.
TILT_THRESHOLD_DEG = 15.0
TILT_MIN_DURATION_S = 2.0
# [S] docs/standards.md §6.1 (drksir): > 90° is an unconditional, immediate alarm.
TILT_IMMEDIATE_DEG = 90.0

# [M] No standard: sensor-to-water distances for the warning and danger
# states (EM400-UDL-type ultrasonic sensors report distance in mm, §6.1).
WATER_WARNING_DISTANCE_MM = 500.0
WATER_DANGER_DISTANCE_MM = 200.0

# [M] GB/T 50493-2019 (石油化工可燃气体和有毒气体检测报警设计标准): first-level
# alarm set point for combustible gas ≤ 25 %LEL. docs/standards.md §6.1.
CH4_ALARM_PCT_LEL = 25.0
# [M] H2S: GBZ 2.1-2019 MAC 10 mg/m³, used as the toxic-gas set point
# (GB/T 50493-2019: first-level toxic alarm ≤ 100 % OEL). docs/standards.md §6.1.
H2S_ALARM_MG_M3 = 10.0

# [M] No standard: a common vendor default for "battery low".
BATTERY_LOW_PCT = 20.0


class WaterLevel(enum.StrEnum):
    """Water level state under a manhole cover."""

    NORMAL = "normal"
    WARNING = "warning"
    DANGER = "danger"


class GasAlarm(enum.StrEnum):
    """Gas over its alarm set point."""

    CH4 = "ch4"
    H2S = "h2s"


def _number(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise IndicatorError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def tilt_alarm_time(
    samples: Iterable[tuple[float, float]],
    *,
    background_deg: float = 0.0,
    threshold_deg: float = TILT_THRESHOLD_DEG,
    min_duration_s: float = TILT_MIN_DURATION_S,
    immediate_deg: float = TILT_IMMEDIATE_DEG,
) -> float | None:
    """First time a tilt alarm is confirmed, if any.

    The tilt is ``|angle − background_deg|``. A tilt over ``immediate_deg``
    alarms at that sample. A tilt over ``threshold_deg`` alarms once it has
    been over the threshold at every sample for ``min_duration_s``: at the
    first sample at least ``min_duration_s`` after the run started. Between
    samples the last angle is assumed to hold; one sample at or below the
    threshold ends the run (a vehicle rolled over the cover).

    Args:
        samples: ``(t_seconds, angle_deg)`` pairs in time order.
        background_deg: Resting angle of the installed cover.
        threshold_deg: Sustained-tilt threshold, default 15° [M].
        min_duration_s: How long the tilt must last, default 2 s [M].
        immediate_deg: Tilt that alarms at once, default 90° [S].

    Returns:
        The sample time (seconds) the alarm is raised, or ``None``.

    Raises:
        IndicatorError: Non-finite values, times going backwards, or
            thresholds that are negative or out of order.
    """
    if not 0 <= threshold_deg <= immediate_deg or min_duration_s < 0:
        raise IndicatorError("need 0 ≤ threshold_deg ≤ immediate_deg and min_duration_s ≥ 0")
    background = _number(background_deg, "background_deg")
    run_start: float | None = None
    previous: float | None = None
    for t_raw, angle_raw in samples:
        t = _number(t_raw, "sample time")
        tilt = abs(_number(angle_raw, "angle") - background)
        if previous is not None and t < previous:
            raise IndicatorError(f"samples must be in time order: {t} after {previous}")
        previous = t
        if tilt > immediate_deg:
            return t
        if tilt > threshold_deg:
            if run_start is None:
                run_start = t
            if t - run_start >= min_duration_s:
                return t
        else:
            run_start = None
    return None


def tilt_alarm(
    samples: Iterable[tuple[float, float]],
    *,
    background_deg: float = 0.0,
    threshold_deg: float = TILT_THRESHOLD_DEG,
    min_duration_s: float = TILT_MIN_DURATION_S,
    immediate_deg: float = TILT_IMMEDIATE_DEG,
) -> bool:
    """Whether the samples raise a tilt alarm; see :func:`tilt_alarm_time`."""
    return (
        tilt_alarm_time(
            samples,
            background_deg=background_deg,
            threshold_deg=threshold_deg,
            min_duration_s=min_duration_s,
            immediate_deg=immediate_deg,
        )
        is not None
    )


def water_level_state(
    distance_mm: float,
    *,
    warning_mm: float = WATER_WARNING_DISTANCE_MM,
    danger_mm: float = WATER_DANGER_DISTANCE_MM,
) -> WaterLevel:
    """Water level state from the sensor-to-water distance.

    Args:
        distance_mm: Distance from the sensor under the cover down to the
            water surface, in mm.
        warning_mm: At or below this distance: warning, default 500 mm [M].
        danger_mm: At or below this distance: danger, default 200 mm [M].

    Returns:
        :class:`WaterLevel`.

    Raises:
        IndicatorError: A negative or non-finite distance, or
            ``danger_mm > warning_mm``.
    """
    if danger_mm > warning_mm:
        raise IndicatorError("danger_mm must not exceed warning_mm (danger is the higher water)")
    distance = _number(distance_mm, "distance_mm")
    if distance < 0:
        raise IndicatorError(f"distance_mm must be ≥ 0, not {distance_mm!r}")
    if distance <= danger_mm:
        return WaterLevel.DANGER
    if distance <= warning_mm:
        return WaterLevel.WARNING
    return WaterLevel.NORMAL


def gas_alarms(
    *,
    ch4_pct_lel: float | None = None,
    h2s_mg_m3: float | None = None,
    ch4_limit_pct_lel: float = CH4_ALARM_PCT_LEL,
    h2s_limit_mg_m3: float = H2S_ALARM_MG_M3,
) -> tuple[GasAlarm, ...]:
    """Gases at or over their alarm set points.

    A gas detector alarms when the reading reaches its set point, so a value
    equal to the set point alarms.

    Args:
        ch4_pct_lel: Methane in %LEL (100 %LEL = 5 %vol), if measured.
        h2s_mg_m3: Hydrogen sulphide in mg/m³, if measured.
        ch4_limit_pct_lel: CH4 set point, default 25 %LEL [M].
        h2s_limit_mg_m3: H2S set point, default 10 mg/m³ [M].

    Returns:
        The gases in alarm, CH4 first.

    Raises:
        IndicatorError: A negative or non-finite reading.
    """
    alarms: list[GasAlarm] = []
    for gas, value, limit in (
        (GasAlarm.CH4, ch4_pct_lel, ch4_limit_pct_lel),
        (GasAlarm.H2S, h2s_mg_m3, h2s_limit_mg_m3),
    ):
        if value is None:
            continue
        reading = _number(value, gas.value)
        if reading < 0:
            raise IndicatorError(f"{gas.value} must be ≥ 0, not {value!r}")
        if reading >= limit:
            alarms.append(gas)
    return tuple(alarms)


def battery_low(percent: float, *, threshold_pct: float = BATTERY_LOW_PCT) -> bool:
    """Whether a battery is low (at or below the threshold).

    Args:
        percent: Remaining capacity, 0..100 %.
        threshold_pct: Low-battery threshold, default 20 % [M].

    Returns:
        ``True`` if ``percent ≤ threshold_pct``.

    Raises:
        IndicatorError: A value outside 0..100 or non-finite.
    """
    value = _number(percent, "battery percent")
    if not 0 <= value <= 100:
        raise IndicatorError(f"battery percent must be in 0..100, not {percent!r}")
    return value <= threshold_pct
