"""Pure, standards-based indicators the alert rules are built on.

One module per concern, each citing the standard and table beside its numbers:

* :mod:`~alerts.indicators.aqi` — AQI per HJ 633-2012 / HJ 633-2026, and the
  hourly, 24 h and O3 8 h averages it needs.
* :mod:`~alerts.indicators.water` — surface-water class per GB 3838-2002.
* :mod:`~alerts.indicators.noise` — environmental noise limits per GB 3096-2008.
* :mod:`~alerts.indicators.manhole` — smart manhole cover alarms.
* :mod:`~alerts.indicators.pole` — smart pole faults.

Nothing here does I/O or keeps state; invalid input raises
:class:`alerts.errors.IndicatorError`.

The AQI function is ``alerts.indicators.aqi.aqi``; here it is re-exported as
:func:`compute_aqi`, because binding it to the name ``aqi`` would hide the
``aqi`` submodule (``import alerts.indicators.aqi as m`` and
``mock.patch("alerts.indicators.aqi.…")`` would then find the function).
"""

from __future__ import annotations

from alerts.indicators.aqi import (
    DEFAULT_VERSION,
    HJ633_2012,
    HJ633_2026,
    LEVELS,
    STANDARDS,
    AqiLevel,
    AqiResult,
    AqiStandard,
    hourly_means,
    iaqi,
    level_for,
    o3_8h_moving_mean,
    rolling_24h_mean,
)
from alerts.indicators.aqi import aqi as compute_aqi
from alerts.indicators.manhole import (
    GasAlarm,
    WaterLevel,
    battery_low,
    gas_alarms,
    tilt_alarm,
    tilt_alarm_time,
    water_level_state,
)
from alerts.indicators.noise import (
    NOISE_LIMITS,
    NoiseAssessment,
    NoiseExceedance,
    assess_noise,
    is_daytime,
    noise_limit,
)
from alerts.indicators.pole import (
    CabinetAlarm,
    ChargerFault,
    ChargerStatus,
    LampFault,
    cabinet_alarms,
    charger_fault,
    lamp_fault,
    pole_tilted,
)
from alerts.indicators.water import (
    CLASS_LABELS,
    GB3838_TABLE1,
    WaterClassResult,
    WaterParameter,
    factors_worse_than,
    single_factor_class,
    water_class,
    worse_than_target,
)

__all__ = [
    "CLASS_LABELS",
    "DEFAULT_VERSION",
    "GB3838_TABLE1",
    "HJ633_2012",
    "HJ633_2026",
    "LEVELS",
    "NOISE_LIMITS",
    "STANDARDS",
    "AqiLevel",
    "AqiResult",
    "AqiStandard",
    "CabinetAlarm",
    "ChargerFault",
    "ChargerStatus",
    "GasAlarm",
    "LampFault",
    "NoiseAssessment",
    "NoiseExceedance",
    "WaterClassResult",
    "WaterLevel",
    "WaterParameter",
    "assess_noise",
    "battery_low",
    "cabinet_alarms",
    "charger_fault",
    "compute_aqi",
    "factors_worse_than",
    "gas_alarms",
    "hourly_means",
    "iaqi",
    "is_daytime",
    "lamp_fault",
    "level_for",
    "noise_limit",
    "o3_8h_moving_mean",
    "pole_tilted",
    "rolling_24h_mean",
    "single_factor_class",
    "tilt_alarm",
    "tilt_alarm_time",
    "water_class",
    "water_level_state",
    "worse_than_target",
]
