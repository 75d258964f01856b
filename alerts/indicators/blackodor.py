"""Black and odorous urban water bodies (黑臭水体) per 城市黑臭水体整治工作指南 (2015).

The guide (住房城乡建设部、环境保护部, 2015-08) grades a water body from four physico-chemical
indicators (its 表 "城市黑臭水体污染程度分级标准"; docs/standards.md §9):

==================  ==============  =========
indicator           轻度黑臭 light    重度黑臭 heavy
==================  ==============  =========
透明度 transparency  25–10 cm *      < 10 cm *
溶解氧 DO            0.2–2.0 mg/L    < 0.2
氧化还原电位 ORP      −200–50 mV      < −200
氨氮 NH3-N           8.0–15 mg/L     > 15
==================  ==============  =========

\\* Water shallower than 25 cm: the transparency threshold is 40 % of the depth (10 cm is
40 % of 25 cm). [M] the guide does not spell out the light band then; here it is 40 % of
the depth up to the depth itself (a visible bed is not black).

Both ends of a light band are light (2.0 mg/L DO is light; 1.99 too; 2.01 is not).

A monitoring point is **heavy** when, of its data, one indicator has at least 60 % heavy
or at least two indicators have at least 30 % heavy; otherwise it is **light** if any
indicator reached the light band, else **not** black-odorous (the guide's 检测点 rule;
"not" is where no datum is in either band).

Pure; invalid input raises :class:`alerts.errors.IndicatorError`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence

from alerts.errors import IndicatorError

__all__ = ["INDICATORS", "BlackOdor", "grade_point", "grade_sample", "indicator_level"]


class BlackOdor(enum.IntEnum):
    """Grade of a water body (0 not black-odorous, 1 light, 2 heavy)."""

    NONE = 0
    LIGHT = 1
    HEAVY = 2


#: The guide's four indicators, by metric name of the station models.
INDICATORS = ("transparency", "do", "orp", "nh3n")
_SHALLOW_CM = 25.0
_SHALLOW_RATIO = 0.4


def indicator_level(indicator: str, value: float, depth_cm: float | None = None) -> BlackOdor:
    """The grade one value of one indicator reaches.

    Args:
        indicator: ``transparency`` (cm), ``do`` (mg/L), ``orp`` (mV) or ``nh3n`` (mg/L).
        value: The measured value.
        depth_cm: Water depth, for transparency in water shallower than 25 cm.
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise IndicatorError(f"{indicator}: {value!r} is not a finite number")
    if indicator == "transparency":
        if value < 0:
            raise IndicatorError(f"transparency {value} cm is negative")
        if depth_cm is not None and 0 < depth_cm < _SHALLOW_CM:
            heavy_below, light_to = _SHALLOW_RATIO * depth_cm, depth_cm
            if value < heavy_below:
                return BlackOdor.HEAVY
            return BlackOdor.LIGHT if value < light_to else BlackOdor.NONE
        if value < 10:
            return BlackOdor.HEAVY
        return BlackOdor.LIGHT if value <= 25 else BlackOdor.NONE
    if indicator == "do":
        if value < 0:
            raise IndicatorError(f"DO {value} mg/L is negative")
        if value < 0.2:
            return BlackOdor.HEAVY
        return BlackOdor.LIGHT if value <= 2.0 else BlackOdor.NONE
    if indicator == "orp":
        if value < -200:
            return BlackOdor.HEAVY
        return BlackOdor.LIGHT if value <= 50 else BlackOdor.NONE
    if indicator == "nh3n":
        if value < 0:
            raise IndicatorError(f"NH3-N {value} mg/L is negative")
        if value > 15:
            return BlackOdor.HEAVY
        return BlackOdor.LIGHT if value >= 8.0 else BlackOdor.NONE
    raise IndicatorError(f"unknown black-odour indicator {indicator!r}; known: {INDICATORS}")


def grade_point(series: Mapping[str, Sequence[float]], depth_cm: float | None = None) -> BlackOdor:
    """A monitoring point's grade from its data (the guide's 检测点 rule, module docstring).

    Args:
        series: Indicator → its measured values (any of the four; at least one value).
        depth_cm: Water depth (transparency in shallow water).
    """
    shares: list[float] = []
    any_band = False
    for indicator, values in series.items():
        if not values:
            continue
        levels = [indicator_level(indicator, v, depth_cm) for v in values]
        any_band = any_band or any(lv >= BlackOdor.LIGHT for lv in levels)
        shares.append(sum(lv is BlackOdor.HEAVY for lv in levels) / len(levels))
    if not shares:
        raise IndicatorError("no black-odour indicator has data")
    if any(s >= 0.6 for s in shares) or sum(s >= 0.3 for s in shares) >= 2:
        return BlackOdor.HEAVY
    return BlackOdor.LIGHT if any_band else BlackOdor.NONE


def grade_sample(values: Mapping[str, float], depth_cm: float | None = None) -> BlackOdor:
    """The grade of one sample (the latest value of each indicator): :func:`grade_point` of one datum each."""
    return grade_point({k: [v] for k, v in values.items() if k in INDICATORS}, depth_cm)
