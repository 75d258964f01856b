"""Environmental noise limits per GB 3096-2008 《声环境质量标准》.

GB 3096-2008 Table 1 (环境噪声限值) gives the limit of the day-time and
night-time equivalent sound level (Ld / Ln, dB(A)) for each 声环境功能区
category. §5.4 adds: at night, a sudden noise's maximum level must not exceed
the limit by more than 15 dB(A). See ``docs/standards.md``
§5 ([S+M]).

Levels are compared as the decimals the caller meant (``repr`` of the float),
so Ld 60.3 against a limit of 60 reports an excess of 0.3 dB, not
0.29999999999999716.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

from alerts.errors import IndicatorError

__all__ = [
    "DAY_END",
    "DAY_START",
    "NIGHT_LMAX_MARGIN_DB",
    "NOISE_LIMITS",
    "ZONES",
    "NoiseAssessment",
    "NoiseExceedance",
    "Period",
    "assess_noise",
    "is_daytime",
    "noise_limit",
]

Period = Literal["day", "night"]

# GB 3096-2008 Table 1, dB(A): zone → (昼间 day, 夜间 night). docs/standards.md §5.
NOISE_LIMITS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "0": (50, 40),  # 0 类 康复疗养区
        "1": (55, 45),  # 1 类 居住、医疗卫生、文化教育、科研设计、行政办公
        "2": (60, 50),  # 2 类 商业金融、集市贸易、居住商业工业混杂
        "3": (65, 55),  # 3 类 工业生产、仓储物流
        "4a": (70, 55),  # 4a 类 高速/一级/二级公路、城市快速路/主干路/次干路、轨道交通地面段、内河航道两侧
        "4b": (70, 60),  # 4b 类 铁路干线两侧
    }
)
ZONES: tuple[str, ...] = tuple(NOISE_LIMITS)

# [M] GB 3096-2008 §3 (terms 昼间/夜间): 昼间 06:00–22:00, 夜间 22:00–06:00; a county-level
# (or higher) government may set other hours, so both ends are parameters.
DAY_START = time(6, 0)
DAY_END = time(22, 0)

# [M] GB 3096-2008 §5.4: 夜间突发噪声，其最大声级超过环境噪声限值的幅度不得高于 15 dB(A).
NIGHT_LMAX_MARGIN_DB = 15


def _zone(zone: str | int) -> str:
    key = str(zone).strip().lower()
    if isinstance(zone, bool) or key not in NOISE_LIMITS:
        raise IndicatorError(f"unknown GB 3096 zone {zone!r}; known: {ZONES}")
    return key


def _level(value: float, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise IndicatorError(f"{what} must be a finite number of dB(A), not {value!r}")
    # repr gives the shortest decimal that round-trips: what the meter showed.
    return Fraction(repr(float(value)))


def is_daytime(
    local_time: datetime | time,
    *,
    day_start: time = DAY_START,
    day_end: time = DAY_END,
) -> bool:
    """Whether a local clock time is in the GB 3096 day period (昼间).

    Args:
        local_time: Local wall-clock time (a ``datetime`` or ``time``); an
            aware ``datetime`` must already be in the site's time zone.
        day_start: First instant of the day period, default 06:00 [M].
        day_end: First instant of the night period, default 22:00 [M].

    Returns:
        ``True`` for ``day_start ≤ t < day_end`` (also when the day period
        wraps midnight, if configured so).

    Raises:
        IndicatorError: If ``day_start == day_end``.
    """
    if day_start == day_end:
        raise IndicatorError("day_start and day_end must differ")
    clock = local_time.time() if isinstance(local_time, datetime) else local_time
    clock = clock.replace(tzinfo=None)
    start, end = day_start.replace(tzinfo=None), day_end.replace(tzinfo=None)
    if start < end:
        return start <= clock < end
    return clock >= start or clock < end


def noise_limit(zone: str | int, period: Period) -> int:
    """GB 3096-2008 Table 1 limit in dB(A).

    Args:
        zone: ``"0"``, ``"1"``, ``"2"``, ``"3"``, ``"4a"`` or ``"4b"``
            (0–3 may be ints).
        period: ``"day"`` (昼间) or ``"night"`` (夜间).

    Returns:
        The equivalent-level limit in dB(A).

    Raises:
        IndicatorError: Unknown zone or period.
    """
    day, night = NOISE_LIMITS[_zone(zone)]
    if period == "day":
        return day
    if period == "night":
        return night
    raise IndicatorError(f"period must be 'day' or 'night', not {period!r}")


@dataclass(frozen=True, slots=True)
class NoiseExceedance:
    """One level over its threshold.

    Attributes:
        metric: ``"ld"`` (day Leq over the day limit), ``"ln"`` (night Leq
            over the night limit) or ``"night_lmax"`` (night maximum level
            more than 15 dB(A) over the night limit).
        value_db: The measured level.
        threshold_db: The level it must not exceed: the Table 1 limit, or
            night limit + 15 for ``"night_lmax"``.
        excess_db: ``value_db − threshold_db`` (> 0).
    """

    metric: Literal["ld", "ln", "night_lmax"]
    value_db: float
    threshold_db: float
    excess_db: float


@dataclass(frozen=True, slots=True)
class NoiseAssessment:
    """GB 3096-2008 assessment of one site and day.

    Attributes:
        zone: 声环境功能区 category.
        day_limit_db: Table 1 day limit.
        night_limit_db: Table 1 night limit.
        ld: Day equivalent level assessed, if given.
        ln: Night equivalent level assessed, if given.
        night_lmax: Night maximum level assessed, if given.
        exceedances: Every level over its threshold, in the order ld, ln,
            night_lmax.
    """

    zone: str
    day_limit_db: int
    night_limit_db: int
    ld: float | None
    ln: float | None
    night_lmax: float | None
    exceedances: tuple[NoiseExceedance, ...]

    @property
    def compliant(self) -> bool:
        """``True`` when no level exceeds its threshold (达标)."""
        return not self.exceedances


def assess_noise(
    zone: str | int,
    ld: float | None = None,
    ln: float | None = None,
    night_lmax: float | None = None,
    *,
    night_lmax_margin_db: float = NIGHT_LMAX_MARGIN_DB,
) -> NoiseAssessment:
    """Check day/night equivalent levels and the night maximum against GB 3096-2008.

    Args:
        zone: ``"0"``, ``"1"``, ``"2"``, ``"3"``, ``"4a"`` or ``"4b"``.
        ld: 昼间等效声级 Ld, dB(A).
        ln: 夜间等效声级 Ln, dB(A).
        night_lmax: Highest night-time maximum level (夜间突发噪声 Lmax), dB(A).
        night_lmax_margin_db: How far Lmax may exceed the night limit,
            default 15 dB(A) [M] (GB 3096-2008 §5.4).

    Returns:
        The :class:`NoiseAssessment`. A level equal to its threshold complies
        (the limits are "not above").

    Raises:
        IndicatorError: Unknown zone, no level given, or a non-finite level.
    """
    key = _zone(zone)
    if ld is None and ln is None and night_lmax is None:
        raise IndicatorError("give at least one of ld, ln, night_lmax")
    day_limit, night_limit = NOISE_LIMITS[key]
    checks: list[tuple[Literal["ld", "ln", "night_lmax"], float | None, Fraction]] = [
        ("ld", ld, Fraction(day_limit)),
        ("ln", ln, Fraction(night_limit)),
        (
            "night_lmax",
            night_lmax,
            Fraction(night_limit) + _level(night_lmax_margin_db, "night_lmax_margin_db"),
        ),
    ]
    exceedances: list[NoiseExceedance] = []
    for metric, value, threshold in checks:
        if value is None:
            continue
        level = _level(value, metric)
        if level > threshold:
            exceedances.append(
                NoiseExceedance(
                    metric=metric,
                    value_db=float(value),
                    threshold_db=float(threshold),
                    excess_db=float(level - threshold),
                )
            )
    return NoiseAssessment(
        zone=key,
        day_limit_db=day_limit,
        night_limit_db=night_limit,
        ld=ld,
        ln=ln,
        night_lmax=night_lmax,
        exceedances=tuple(exceedances),
    )
