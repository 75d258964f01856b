"""China's Air Quality Index (AQI) per HJ 633-2012 and HJ 633-2026.

Everything here is pure: concentrations in, integers and frozen records out.
Breakpoint tables are data (one :class:`AqiStandard` per version) so that a
reviewer can hold them against the standard's table line by line, and so that
the items not yet confirmed against the official text (marked ``[M]``) can be
overridden with :func:`dataclasses.replace` instead of editing code.

Sources (see ``docs/standards.md`` §3):

* HJ 633-2012 《环境空气质量指数（AQI）技术规定（试行）》 Table 1 — §3.1 [V].
* HJ 633-2026, in force 2026-03-01 — only the PM2.5 and PM10 rows changed — §3.2 [S].
* Levels and colours, HJ 633 Table 2 — §3.3 [V].

Units: µg/m³ for every pollutant except CO, which is in mg/m³ (HJ 633 Table 1).

Interpolation (HJ 633 formula (1))::

    IAQI_P = (IAQI_Hi − IAQI_Lo) / (BP_Hi − BP_Lo) × (C_P − BP_Lo) + IAQI_Lo

HJ 633-2026 says "计算结果向上进位取整数": the result is rounded *up*. A naive
float computation turns exact integers into ``218.00000000000003`` (CO 1h
65.4 mg/m³) and ceil then adds one, so the arithmetic is done on exact
:class:`fractions.Fraction` values built from the decimal the caller meant.

The module also turns stored readings into the averages HJ 633 needs (hourly
means, 24 h sliding means, O3 8 h moving means) with numpy only, applying the
data-validity counts of GB 3095-2012 Table 4.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from alerts.errors import IndicatorError

__all__ = [
    "DAILY_MIN_VALID_HOURS",
    "DEFAULT_VERSION",
    "HJ633_2012",
    "HJ633_2026",
    "IAQI_STEPS",
    "LEVELS",
    "O3_8H_MIN_VALID_HOURS",
    "POLLUTANTS",
    "STANDARDS",
    "AqiLevel",
    "AqiResult",
    "AqiStandard",
    "aqi",
    "area_aqi",
    "hourly_means",
    "iaqi",
    "level_for",
    "o3_8h_moving_mean",
    "rolling_24h_mean",
]

Mode = Literal["hourly", "daily"]
Key = tuple[str, str]
"""A ``(pollutant, averaging period)`` pair, e.g. ``("o3", "8h")``."""
Number = float | Decimal | Fraction
Concentrations = Mapping[Key, Number] | Mapping[str, Number] | Mapping[Key | str, Number]
"""Averages keyed by ``(pollutant, period)`` or by bare pollutant name."""

# Pollutants in the order HJ 633 Table 1 lists them; results list pollutants
# in this order so that ties come out the same way every time.
POLLUTANTS: tuple[str, ...] = ("so2", "no2", "pm10", "co", "o3", "pm25")

_UNITS: Mapping[str, str] = MappingProxyType(
    {"so2": "µg/m³", "no2": "µg/m³", "pm10": "µg/m³", "co": "mg/m³", "o3": "µg/m³", "pm25": "µg/m³"}
)

# HJ 633-2012 Table 1, first row: the IAQI value at each breakpoint column.
# A breakpoint row of n concentrations covers IAQI_STEPS[:n].
IAQI_STEPS: tuple[int, ...] = (0, 50, 100, 150, 200, 300, 400, 500)

_TOP_IAQI = 500
# Float IAQIs nearer than this to an integer are recomputed exactly (iaqi).
_NEAR_INTEGER = 1e-6

# --- HJ 633-2012 Table 1 (docs/standards.md §3.1, [V]) -----------------------------------------------
# Concentrations at IAQI 0, 50, 100, 150, 200, 300, 400, 500.
_BREAKPOINTS_2012: dict[Key, tuple[int, ...]] = {
    ("so2", "24h"): (0, 50, 150, 475, 800, 1600, 2100, 2620),  # µg/m³, Table 1
    # Table 1 note (2): the SO2 1 h row stops at 800 µg/m³ (IAQI 200); above it
    # no 1 h IAQI is defined and the 24 h value is reported instead.
    ("so2", "1h"): (0, 150, 500, 650, 800),  # µg/m³, Table 1
    ("no2", "24h"): (0, 40, 80, 180, 280, 565, 750, 940),  # µg/m³, Table 1
    ("no2", "1h"): (0, 100, 200, 700, 1200, 2340, 3090, 3840),  # µg/m³, Table 1
    ("pm10", "24h"): (0, 50, 150, 250, 350, 420, 500, 600),  # µg/m³, Table 1
    ("co", "24h"): (0, 2, 4, 14, 24, 36, 48, 60),  # mg/m³, Table 1
    ("co", "1h"): (0, 5, 10, 35, 60, 90, 120, 150),  # mg/m³, Table 1
    ("o3", "1h"): (0, 160, 200, 300, 400, 800, 1000, 1200),  # µg/m³, Table 1
    # Table 1 note (3): the O3 8 h row stops at 800 µg/m³ (IAQI 300); above it
    # no 8 h IAQI is defined and the 1 h value is reported instead.
    ("o3", "8h"): (0, 100, 160, 215, 265, 800),  # µg/m³, Table 1
    ("pm25", "24h"): (0, 35, 75, 115, 150, 250, 350, 500),  # µg/m³, Table 1
}

# --- HJ 633-2026 (docs/standards.md §3.2, [S]: two public implementations agree) ---------------------
# Only PM2.5 and PM10 changed ("更新了AQI中PM2.5和PM10的分级浓度限值"); the
# IAQI-100 breakpoint drops to 60 (PM2.5) and 120 (PM10) µg/m³. 2026 real-time
# reports use hourly PM means with the same breakpoints as the 24 h row.
_PM25_2026 = (0, 35, 60, 115, 150, 250, 350, 500)  # µg/m³, HJ 633-2026 Table 1 [S]
_PM10_2026 = (0, 50, 120, 250, 350, 420, 500, 600)  # µg/m³, HJ 633-2026 Table 1 [S]
_BREAKPOINTS_2026: dict[Key, tuple[int, ...]] = {
    **_BREAKPOINTS_2012,
    ("pm25", "24h"): _PM25_2026,
    ("pm25", "1h"): _PM25_2026,
    ("pm10", "24h"): _PM10_2026,
    ("pm10", "1h"): _PM10_2026,
}

# Which averages make up each report (HJ 633 实时报 / 日报; Table 1 notes (1)–(3),
# docs/standards.md §3.1).
# The first period listed for a pollutant is the one a bare pollutant name
# ("pm25") stands for.
_HOURLY_2012: dict[str, tuple[str, ...]] = {
    "so2": ("1h",),
    "no2": ("1h",),
    # 2012 实时报 used 24 h sliding means for particulate matter [M].
    "pm10": ("24h",),
    "co": ("1h",),
    "o3": ("1h", "8h"),
    "pm25": ("24h",),
}
_HOURLY_2026: dict[str, tuple[str, ...]] = {**_HOURLY_2012, "pm10": ("1h",), "pm25": ("1h",)}
# 日报: 24 h means, and for O3 the daily maximum 8 h moving mean and the
# daily maximum 1 h mean. Table 1 note (1): 1 h SO2/NO2/CO are real-time only.
_DAILY: dict[str, tuple[str, ...]] = {
    "so2": ("24h",),
    "no2": ("24h",),
    "pm10": ("24h",),
    "co": ("24h",),
    "o3": ("8h", "1h"),
    "pm25": ("24h",),
}

# Where a truncated row's value lies above its last breakpoint, the IAQI comes
# from this other average instead (Table 1 notes (2) and (3)).
_FALLBACKS: dict[Key, Key] = {("so2", "1h"): ("so2", "24h"), ("o3", "8h"): ("o3", "1h")}


@dataclass(frozen=True, slots=True)
class AqiStandard:
    """One version of the AQI rules, as data.

    Attributes:
        name: Version label, e.g. ``"HJ633-2026"``.
        breakpoints: ``(pollutant, period)`` → concentrations at the IAQI values
            of :data:`IAQI_STEPS`, strictly increasing from 0.
        over_top_iaqi: For rows that stop before IAQI 500 (SO2 1 h, O3 8 h):
            the IAQI to report when the concentration is above the last
            breakpoint, or ``None`` for "no IAQI from this average; use the
            fallback average" (SO2 → 24 h, O3 8 h → 1 h).
        reports_exceeding: Whether the version defines 超标污染物 (IAQI > 100).
        hourly_periods: Periods counted in a real-time (hourly) report, per
            pollutant; the first one is what a bare pollutant name means.
        daily_periods: The same for the daily report.
    """

    name: str
    breakpoints: Mapping[Key, tuple[int, ...]]
    over_top_iaqi: Mapping[Key, int | None]
    reports_exceeding: bool
    hourly_periods: Mapping[str, tuple[str, ...]]
    daily_periods: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType(_DAILY))

    def __post_init__(self) -> None:
        for key, row in self.breakpoints.items():
            if key[0] not in POLLUTANTS:
                raise IndicatorError(f"{self.name}: unknown pollutant {key[0]!r}")
            if not 2 <= len(row) <= len(IAQI_STEPS) or row[0] != 0:
                raise IndicatorError(f"{self.name}: breakpoints for {key} must start at 0, 2..8 values")
            if any(lo >= hi for lo, hi in itertools.pairwise(row)):
                raise IndicatorError(f"{self.name}: breakpoints for {key} must strictly increase")
        for key, value in self.over_top_iaqi.items():
            if key not in self.breakpoints or len(self.breakpoints[key]) == len(IAQI_STEPS):
                raise IndicatorError(f"{self.name}: over_top_iaqi given for {key}, which is not truncated")
            if value is not None and not 0 <= value <= _TOP_IAQI:
                raise IndicatorError(f"{self.name}: over_top_iaqi for {key} must be in 0..500 or None")
            if value is None and key not in _FALLBACKS:
                raise IndicatorError(f"{self.name}: {key} has no fallback average, so it needs an IAQI")
        # Freeze whatever mappings the caller passed (e.g. via dataclasses.replace).
        for name in ("breakpoints", "over_top_iaqi", "hourly_periods", "daily_periods"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    def periods(self, mode: Mode) -> Mapping[str, tuple[str, ...]]:
        """Periods counted in a report of the given mode."""
        if mode == "hourly":
            return self.hourly_periods
        if mode == "daily":
            return self.daily_periods
        raise IndicatorError(f"mode must be 'hourly' or 'daily', not {mode!r}")


HJ633_2012 = AqiStandard(
    name="HJ633-2012",
    breakpoints=MappingProxyType(_BREAKPOINTS_2012),
    # Table 1 notes (2)/(3): no IAQI above the last breakpoint; use the fallback.
    over_top_iaqi=MappingProxyType({("so2", "1h"): None, ("o3", "8h"): None}),
    reports_exceeding=True,
    hourly_periods=MappingProxyType(_HOURLY_2012),
)
"""HJ 633-2012 Table 1 (docs/standards.md §3.1)."""

HJ633_2026 = AqiStandard(
    name="HJ633-2026",
    breakpoints=MappingProxyType(_BREAKPOINTS_2026),
    # [M] caiyunapp/aqi-hub's reading of HJ 633-2026: SO2 1 h > 800 → IAQI 200,
    # O3 8 h > 800 → IAQI 300 (docs/standards.md §3.2, not checked against the
    # official text). For the 2012 behaviour instead, use
    # dataclasses.replace(HJ633_2026, over_top_iaqi={("so2", "1h"): None, ("o3", "8h"): None}).
    over_top_iaqi=MappingProxyType({("so2", "1h"): 200, ("o3", "8h"): 300}),
    # 2026 removed 超标污染物 (aqi-hub README, docs/standards.md §3 [S]).
    reports_exceeding=False,
    hourly_periods=MappingProxyType(_HOURLY_2026),
)
"""HJ 633-2026, in force 2026-03-01 (docs/standards.md §3.2)."""

STANDARDS: Mapping[str, AqiStandard] = MappingProxyType({HJ633_2012.name: HJ633_2012, HJ633_2026.name: HJ633_2026})
DEFAULT_VERSION = HJ633_2026.name


# --- levels (HJ 633 Table 2; docs/standards.md §3.3 [V]) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class AqiLevel:
    """One AQI level (空气质量指数级别) with its category and colour.

    Attributes:
        level: 1 (一级) … 6 (六级).
        grade_zh: 级别, e.g. ``"一级"``.
        category_zh: 类别, e.g. ``"优"``.
        category_en: English category.
        colour_zh: 表示颜色, e.g. ``"绿色"``.
        colour_en: English colour name.
        colour_hex: ``"#RRGGBB"``.
        colour_rgb: ``(r, g, b)``.
        colour_cmyk: ``(c, m, y, k)`` in percent, as printed in HJ 633.
        aqi_min: Lowest AQI of the level.
        aqi_max: Highest AQI of the level, ``None`` for the open-ended 六级.
    """

    level: int
    grade_zh: str
    category_zh: str
    category_en: str
    colour_zh: str
    colour_en: str
    colour_hex: str
    colour_rgb: tuple[int, int, int]
    colour_cmyk: tuple[int, int, int, int]
    aqi_min: int
    aqi_max: int | None


# HJ 633-2012 Table 2 / HJ 633-2026; colours exactly as docs/standards.md §3.3 [V].
# fmt: off
LEVELS: tuple[AqiLevel, ...] = (
    AqiLevel(1, "一级", "优", "Excellent", "绿色", "green",
             "#00E400", (0, 228, 0), (40, 0, 100, 0), 0, 50),
    AqiLevel(2, "二级", "良", "Good", "黄色", "yellow",
             "#FFFF00", (255, 255, 0), (0, 0, 100, 0), 51, 100),
    AqiLevel(3, "三级", "轻度污染", "Lightly polluted", "橙色", "orange",
             "#FF7E00", (255, 126, 0), (0, 52, 100, 0), 101, 150),
    AqiLevel(4, "四级", "中度污染", "Moderately polluted", "红色", "red",
             "#FF0000", (255, 0, 0), (0, 100, 100, 0), 151, 200),
    AqiLevel(5, "五级", "重度污染", "Heavily polluted", "紫色", "purple",
             "#99004C", (153, 0, 76), (10, 100, 40, 30), 201, 300),
    AqiLevel(6, "六级", "严重污染", "Severely polluted", "褐红色", "maroon",
             "#7E0023", (126, 0, 35), (30, 100, 100, 30), 301, None),
)
# fmt: on


def level_for(aqi: float) -> AqiLevel:
    """Return the AQI level (HJ 633 Table 2) for an AQI value.

    Args:
        aqi: The AQI. HJ 633 AQIs are integers; a fractional value is rounded
            up first, the same rule the IAQI uses, so 50.2 is level 2.

    Returns:
        The :class:`AqiLevel` whose range holds the value.

    Raises:
        IndicatorError: If the value is negative or not finite.
    """
    if isinstance(aqi, bool) or not isinstance(aqi, numbers.Real) or not math.isfinite(aqi) or aqi < 0:
        raise IndicatorError(f"AQI must be a finite number ≥ 0, not {aqi!r}")
    value = math.ceil(aqi)
    for band in LEVELS:
        if band.aqi_max is None or value <= band.aqi_max:
            return band
    raise AssertionError("unreachable: the last level is open-ended")  # pragma: no cover


# --- IAQI ----------------------------------------------------------------------------------------


def _standard(version: str | AqiStandard) -> AqiStandard:
    if isinstance(version, AqiStandard):
        return version
    try:
        return STANDARDS[version]
    except KeyError:
        raise IndicatorError(f"unknown AQI version {version!r}; known: {sorted(STANDARDS)}") from None


def _pollutant(name: str) -> str:
    if name in POLLUTANTS:
        return name  # already canonical (every call from the rules)
    # Accept "PM2.5" / "pm2.5" as well as the canonical "pm25".
    key = name.strip().lower().replace(".", "").replace("_", "")
    if key not in POLLUTANTS:
        raise IndicatorError(f"unknown pollutant {name!r}; known: {POLLUTANTS}")
    return key


def _exact(value: Number, what: str) -> Fraction:
    """The exact decimal the caller meant, as a Fraction.

    ``Fraction(5.7)`` is the binary float 5.70000000000000017…, which makes an
    exact integer IAQI ceil up by one; ``repr`` gives the shortest decimal
    that round-trips ("5.7"), which is what a sensor or a person wrote.
    """
    if isinstance(value, bool | str | bytes):
        raise IndicatorError(f"{what}: a concentration must be a number, not {value!r}")
    if isinstance(value, int | Fraction):
        exact = Fraction(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise IndicatorError(f"{what}: concentration must be finite, not {value!r}")
        exact = Fraction(value)
    else:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise IndicatorError(f"{what}: a concentration must be a number, not {value!r}") from None
        if not math.isfinite(as_float):
            raise IndicatorError(f"{what}: concentration must be finite, not {value!r}")
        exact = Fraction(repr(as_float))
    if exact < 0:
        raise IndicatorError(f"{what}: concentration must be ≥ 0, not {value!r}")
    return exact


def iaqi(
    pollutant: str,
    concentration: Number,
    period: str,
    version: str | AqiStandard = DEFAULT_VERSION,
) -> int | None:
    """Individual AQI (空气质量分指数) of one pollutant average.

    Args:
        pollutant: ``"so2"``, ``"no2"``, ``"pm10"``, ``"co"``, ``"o3"`` or
            ``"pm25"`` (``"PM2.5"`` is accepted too).
        concentration: The average, in µg/m³ (CO: mg/m³).
        period: ``"1h"``, ``"24h"`` or ``"8h"`` (O3 only).
        version: ``"HJ633-2012"``, ``"HJ633-2026"`` or an :class:`AqiStandard`.

    Returns:
        The IAQI rounded up to an integer (HJ 633-2026 "向上进位取整数"),
        capped at 500 above the last breakpoint. ``None`` where the version
        defines no IAQI: HJ 633-2012 SO2 1 h > 800 µg/m³ (use the 24 h
        value) and O3 8 h > 800 µg/m³ (use the 1 h value). HJ 633-2026 as
        read by aqi-hub returns 200 and 300 there instead [M].

    Raises:
        IndicatorError: Unknown pollutant, period or version; or a negative,
            non-finite or non-numeric concentration.
    """
    std = _standard(version)
    key = (_pollutant(pollutant), period)
    row = std.breakpoints.get(key)
    if row is None:
        known = sorted(p for name, p in std.breakpoints if name == key[0])
        raise IndicatorError(f"{std.name} defines no {period!r} IAQI for {key[0]}; periods: {known}")
    # A plain float (every reading) is compared and interpolated in floating point, and
    # only a result within _NEAR_INTEGER of an integer is redone exactly: anywhere else
    # ceil() of the float and of the exact decimal agree (the float's error is ~1e-13),
    # and the breakpoints are integers, which a float compares with exactly. A tenth of
    # the stream worker's CPU went to Fractions before (docs/benchmarks.md).
    c: float | Fraction
    if type(concentration) is float and 0.0 <= concentration < math.inf:
        c = concentration
    else:
        c = _exact(concentration, f"{key[0]} {period}")

    if c > row[-1]:
        if len(row) < len(IAQI_STEPS):
            # Truncated row (SO2 1 h, O3 8 h): the version decides.
            return std.over_top_iaqi.get(key)
        # Above the top breakpoint the standard says nothing; like every
        # public implementation, report the top of the scale.
        return _TOP_IAQI

    # First segment whose upper breakpoint reaches c; a value on a
    # breakpoint gives that breakpoint's IAQI from either side.
    hi = bisect_left(row, c)
    if hi == 0:
        return 0
    lo = hi - 1
    if type(c) is float:
        approx = (IAQI_STEPS[hi] - IAQI_STEPS[lo]) / (row[hi] - row[lo]) * (c - row[lo]) + IAQI_STEPS[lo]
        up = math.ceil(approx)
        if up - approx > _NEAR_INTEGER and approx - (up - 1) > _NEAR_INTEGER:
            return up
        # Near an integer (integer concentrations often land on one): exactly, in integers,
        # from the shortest decimal that round-trips (what _exact means), n / d.
        n, d = Decimal(repr(c)).as_integer_ratio()
        num = (IAQI_STEPS[hi] - IAQI_STEPS[lo]) * (n - row[lo] * d)
        return IAQI_STEPS[lo] - (-num // ((row[hi] - row[lo]) * d))
    value = Fraction(IAQI_STEPS[hi] - IAQI_STEPS[lo], row[hi] - row[lo]) * (c - row[lo]) + IAQI_STEPS[lo]
    return math.ceil(value)


# --- AQI -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AqiResult:
    """An AQI report for one place and time.

    Attributes:
        aqi: The AQI, max of the IAQIs.
        level: 1 … 6 (HJ 633 Table 2).
        category_zh: 类别, e.g. ``"轻度污染"``.
        category_en: English category.
        colour_hex: ``"#RRGGBB"`` of the level.
        colour_rgb: ``(r, g, b)`` of the level.
        primary_pollutants: 首要污染物: pollutants whose IAQI equals the AQI,
            in HJ 633 order; empty when AQI ≤ 50.
        iaqi: IAQI of every average that counted, by ``(pollutant, period)``.
        exceeding_pollutants: 超标污染物 (IAQI > 100) under HJ 633-2012;
            ``None`` under versions that do not define them (2026).
        version: Version label the result was computed with.
        mode: ``"hourly"`` (实时报) or ``"daily"`` (日报).
    """

    aqi: int
    level: int
    category_zh: str
    category_en: str
    colour_hex: str
    colour_rgb: tuple[int, int, int]
    primary_pollutants: tuple[str, ...]
    iaqi: Mapping[Key, int]
    exceeding_pollutants: tuple[str, ...] | None
    version: str
    mode: str

    @property
    def band(self) -> AqiLevel:
        """The full :class:`AqiLevel` record (grade, colour names, CMYK)."""
        return LEVELS[self.level - 1]

    @property
    def iaqi_by_pollutant(self) -> Mapping[str, int]:
        """The highest IAQI of each pollutant over its averaging periods."""
        best: dict[str, int] = {}
        for (name, _), value in self.iaqi.items():
            best[name] = max(value, best.get(name, 0))
        return MappingProxyType({p: best[p] for p in POLLUTANTS if p in best})


def _resolve(
    concentrations: Concentrations,
    std: AqiStandard,
    mode: Mode,
) -> dict[Key, Number]:
    """Map bare names to their default period and refuse averages the report does not use."""
    if STANDARDS.get(std.name) is std:
        # The shipped standards: the same keys (a station's pollutants) resolve the same way
        # every time, so the checks below run once per set of keys (lru_cache).
        try:
            keys = _resolved_keys(std.name, mode, tuple(concentrations))
        except TypeError:  # an unhashable key: the checks below name it
            pass
        else:
            return dict(zip(keys, concentrations.values(), strict=True))
    return _resolve_checked(concentrations, std, mode)


@functools.lru_cache(maxsize=256)
def _resolved_keys(version: str, mode: Mode, raw_keys: tuple[Any, ...]) -> tuple[Key, ...]:
    return tuple(_resolve_checked(dict.fromkeys(raw_keys, 0), STANDARDS[version], mode))


def _resolve_checked(
    concentrations: Concentrations,
    std: AqiStandard,
    mode: Mode,
) -> dict[Key, Number]:
    periods = std.periods(mode)
    resolved: dict[Key, Number] = {}
    for raw_key, value in concentrations.items():
        if isinstance(raw_key, str):
            name = _pollutant(raw_key)
            if not periods.get(name):
                raise IndicatorError(f"{name} is not part of a {mode} report under {std.name}")
            key = (name, periods[name][0])
        elif isinstance(raw_key, tuple) and len(raw_key) == 2:
            key = (_pollutant(raw_key[0]), raw_key[1])
        else:
            raise IndicatorError(f"concentration keys are pollutant names or (pollutant, period), not {raw_key!r}")
        counted = key[1] in periods.get(key[0], ())
        fallback_for = [src for src, dst in _FALLBACKS.items() if dst == key and src[1] in periods.get(src[0], ())]
        if not counted and not fallback_for:
            raise IndicatorError(
                f"{key[0]} {key[1]} is not used in a {mode} report under {std.name}; periods: {periods.get(key[0], ())}"
            )
        if key in resolved:
            raise IndicatorError(f"{key[0]} {key[1]} given twice")
        resolved[key] = value
    return resolved


def aqi(
    concentrations: Concentrations,
    version: str | AqiStandard = DEFAULT_VERSION,
    mode: Mode = "hourly",
) -> AqiResult:
    """Compute the AQI, its level and the primary pollutants.

    Args:
        concentrations: Averages keyed by ``(pollutant, period)`` or by bare
            pollutant name, which means the report's main period: hourly →
            1 h (PM: 24 h sliding under 2012, 1 h under 2026; ``"o3"`` → 1 h),
            daily → 24 h (``"o3"`` → daily max 8 h). Pass ``("o3", "8h")`` /
            ``("o3", "1h")`` explicitly for the other O3 average. A fallback
            average (SO2 24 h in an hourly report) is only used when the main
            one has no IAQI (HJ 633-2012 Table 1 note (2)).
        version: ``"HJ633-2012"``, ``"HJ633-2026"`` or an :class:`AqiStandard`.
        mode: ``"hourly"`` (实时报) or ``"daily"`` (日报).

    Returns:
        The :class:`AqiResult`.

    Raises:
        IndicatorError: No concentrations; an unknown pollutant/period; an
            average the report does not use; a key given twice; a bad value;
            or an average with no IAQI (2012: SO2 1 h > 800, O3 8 h > 800)
            whose fallback average was not given.
    """
    std = _standard(version)
    if not concentrations:
        raise IndicatorError("no concentrations given")
    resolved = _resolve(concentrations, std, mode)
    periods = std.periods(mode)

    values: dict[Key, int] = {}
    needed_fallbacks: list[Key] = []
    for key, concentration in resolved.items():
        if key[1] not in periods.get(key[0], ()):
            continue  # a fallback-only average; used below if needed
        value = iaqi(key[0], concentration, key[1], std)
        if value is None:
            fallback = _FALLBACKS[key]
            if fallback not in resolved:
                raise IndicatorError(
                    f"{std.name} defines no IAQI for {key[0]} {key[1]} = {concentration} "
                    f"(above {std.breakpoints[key][-1]} {_UNITS[key[0]]}); "
                    f"give {fallback[0]} {fallback[1]} too"
                )
            needed_fallbacks.append(fallback)
        else:
            values[key] = value
    for fallback in needed_fallbacks:
        if fallback not in values:
            value = iaqi(fallback[0], resolved[fallback], fallback[1], std)
            if value is None:  # pragma: no cover - fallbacks are full rows
                raise IndicatorError(f"no IAQI for fallback {fallback}")
            values[fallback] = value

    if not values:
        # Only fallback averages (e.g. SO2 24 h in an hourly report) were given.
        raise IndicatorError(f"no average of a {mode} report given; got only {sorted(resolved)}")
    total = max(values.values())
    by_pollutant: dict[str, int] = {}
    for (name, _), value in values.items():
        by_pollutant[name] = max(value, by_pollutant.get(name, 0))
    # 首要污染物 only when AQI > 50; ties are all listed (HJ 633, docs/standards.md §3).
    primary = tuple(p for p in POLLUTANTS if total > 50 and by_pollutant.get(p) == total)
    exceeding = tuple(p for p in POLLUTANTS if by_pollutant.get(p, 0) > 100) if std.reports_exceeding else None
    band = level_for(total)
    keys = sorted(values)
    ordered = {k: values[k] for p in POLLUTANTS for k in keys if k[0] == p}
    return AqiResult(
        aqi=total,
        level=band.level,
        category_zh=band.category_zh,
        category_en=band.category_en,
        colour_hex=band.colour_hex,
        colour_rgb=band.colour_rgb,
        primary_pollutants=primary,
        iaqi=MappingProxyType(ordered),
        exceeding_pollutants=exceeding,
        version=std.name,
        mode=mode,
    )


# --- area AQI (a district, the city) ------------------------------------------------------------


def area_aqi(
    stations: Iterable[Mapping[str, Number]],
    version: str | AqiStandard = DEFAULT_VERSION,
    mode: Mode = "hourly",
) -> AqiResult | None:
    """The AQI of an area from its assessment stations (docs/standards.md §3.6).

    HJ 633 computes an area's (a city's, a district's) AQI from the area's
    concentrations, and an area's concentration of a pollutant is the
    arithmetic mean over its assessment stations (评价点位; HJ 663): so each
    pollutant is averaged first, over the stations that report it, and
    IAQI and AQI are computed on those means with :func:`aqi` (formula (1),
    the largest IAQI). The AQI is *not* the highest station's AQI, nor the
    mean of the stations' AQIs. Which stations are assessment stations is
    the caller's decision (a device attribute; micro-stations are not).

    Args:
        stations: One mapping per assessment station, pollutant (or
            ``(pollutant, period)`` key as :func:`aqi` takes) → concentration.
            A station that lacks a pollutant does not count in that
            pollutant's mean.
        version: The AQI version, as for :func:`aqi`.
        mode: ``"hourly"`` or ``"daily"``, as for :func:`aqi`.

    Returns:
        The :class:`AqiResult` of the means, or ``None`` when no station
        reported any pollutant.

    Raises:
        IndicatorError: On a bad concentration or key, as :func:`aqi`.
    """
    sums: dict[Key | str, Fraction] = {}
    counts: dict[Key | str, int] = {}
    for station in stations:
        for key, value in station.items():
            label = f"{key[0]} {key[1]}" if isinstance(key, tuple) else str(key)
            sums[key] = sums.get(key, Fraction(0)) + _exact(value, label)
            counts[key] = counts.get(key, 0) + 1
    if not sums:
        return None
    # Exact means: a mean of 34.5 and 35.5 is 35 exactly, not 34.99999….
    means: dict[Key | str, Number] = {key: total / counts[key] for key, total in sums.items()}
    return aqi(means, version=version, mode=mode)


# --- averages from stored readings ---------------------------------------------------------------

# [M] GB 3095-2012 Table 4 (数据统计的有效性规定) (docs/standards.md §3.4), not
# checked against GB 3095-2026: a 24 h mean needs ≥ 20 hourly means, an O3
# 8 h mean needs ≥ 6 hourly means in the 8 hours. Callers may pass others.
DAILY_MIN_VALID_HOURS = 20
O3_8H_MIN_VALID_HOURS = 6

_HOUR = "datetime64[h]"


def _as_times(times: npt.ArrayLike, what: str) -> npt.NDArray[np.datetime64]:
    array = np.asarray(times)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.datetime64):
        raise IndicatorError(f"{what} must be a 1-D numpy datetime64 array, got {array.dtype} {array.shape}")
    return array


def _as_values(values: npt.ArrayLike, size: int) -> npt.NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise IndicatorError(f"values must be numeric: {exc}") from exc
    if array.shape != (size,):
        raise IndicatorError(f"values must have shape ({size},), got {array.shape}")
    return array


def hourly_means(
    times_utc: npt.ArrayLike,
    values: npt.ArrayLike,
    *,
    min_samples: int = 1,
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    """Hourly (1 h) means of raw readings.

    Args:
        times_utc: Reading times, a 1-D ``datetime64`` array in UTC, any order.
        values: Readings, same length; NaN means "no value" and is skipped.
        min_samples: Fewest readings an hour needs to have a mean. [M] GB
            3095-2012 Table 4 asks for ≥ 45 minutes of sampling per hour; set
            this from the device's reporting interval (e.g. 45 for 1-minute
            data). The default accepts any reading.

    Returns:
        ``(hours, means)``: sorted ``datetime64[h]`` hour starts (the hour
        ``[h, h+1)``), and the mean of each. Hours without enough readings
        are left out.

    Raises:
        IndicatorError: Arrays of the wrong type or shape, or
            ``min_samples < 1``.
    """
    if min_samples < 1:
        raise IndicatorError(f"min_samples must be ≥ 1, not {min_samples}")
    times = _as_times(times_utc, "times_utc")
    vals = _as_values(values, times.size)
    ok = np.isfinite(vals) & ~np.isnat(times)
    hours_each = times[ok].astype(_HOUR)
    hours, inverse, counts = np.unique(hours_each, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse.ravel(), weights=vals[ok], minlength=hours.size)
    keep = counts >= min_samples
    return hours[keep], sums[keep] / counts[keep]


def _moving_mean(
    hours: npt.ArrayLike,
    means: npt.ArrayLike,
    window: int,
    min_valid: int,
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    if not 1 <= min_valid <= window:
        raise IndicatorError(f"min_valid must be in 1..{window}, not {min_valid}")
    h = _as_times(hours, "hours").astype(_HOUR)
    v = _as_values(means, h.size)
    ok = np.isfinite(v) & ~np.isnat(h)
    h, v = h[ok], v[ok]
    if h.size == 0:
        return np.empty(0, dtype=_HOUR), np.empty(0, dtype=np.float64)
    start = h.min()
    offsets = (h - start).astype(np.int64)
    if np.unique(offsets).size != offsets.size:
        raise IndicatorError("hours must be unique; aggregate with hourly_means first")
    n = int(offsets.max()) + 1
    # A dense hourly grid, NaN where the hour is missing, padded in front so
    # that every grid hour has a full window behind it.
    grid = np.full(n + window - 1, np.nan)
    grid[offsets + window - 1] = v
    windows = np.lib.stride_tricks.sliding_window_view(grid, window)
    present = np.isfinite(windows)
    counts = present.sum(axis=1)
    sums = np.where(present, windows, 0.0).sum(axis=1)
    out = np.full(n, np.nan)
    valid = counts >= min_valid
    out[valid] = sums[valid] / counts[valid]
    return start + np.arange(n).astype("timedelta64[h]"), out


def rolling_24h_mean(
    hours: npt.ArrayLike,
    means: npt.ArrayLike,
    *,
    min_valid: int = DAILY_MIN_VALID_HOURS,
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    """24 h sliding means of hourly means (PM real-time reports under 2012, daily values).

    Args:
        hours: Hour starts (``datetime64``, unique), as from :func:`hourly_means`.
        means: Hourly means; NaN counts as missing.
        min_valid: Fewest hourly means a window needs. [M] Default 20 of 24,
            GB 3095-2012 Table 4.

    Returns:
        ``(ends, values)``: every hour from the first to the last given hour;
        the value at hour ``h`` is the mean over hours ``h-23 … h``, NaN where
        the window has fewer than ``min_valid`` hourly means.

    Raises:
        IndicatorError: Bad arrays, duplicate hours, or ``min_valid`` outside 1..24.
    """
    return _moving_mean(hours, means, 24, min_valid)


def o3_8h_moving_mean(
    hours: npt.ArrayLike,
    means: npt.ArrayLike,
    *,
    min_valid: int = O3_8H_MIN_VALID_HOURS,
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    """O3 8 h moving means (臭氧8小时滑动平均) of hourly means.

    Args:
        hours: Hour starts (``datetime64``, unique), as from :func:`hourly_means`.
        means: Hourly O3 means in µg/m³; NaN counts as missing.
        min_valid: Fewest hourly means a window needs. [M] Default 6 of 8,
            GB 3095-2012 Table 4 ("每8小时至少有6小时平均浓度值").

    Returns:
        ``(ends, values)``: every hour from the first to the last given hour;
        the value at hour ``h`` is the mean over hours ``h-7 … h``, NaN where
        fewer than ``min_valid`` of those hours have a mean.

    Raises:
        IndicatorError: Bad arrays, duplicate hours, or ``min_valid`` outside 1..8.
    """
    return _moving_mean(hours, means, 8, min_valid)
