"""Surface-water quality class per GB 3838-2002 Table 1 (single-factor method).

GB 3838-2002 《地表水环境质量标准》 Table 1 (基本项目标准限值) gives, for each
parameter, the limit of classes I–V; a water body's class is the worst class
of any assessed parameter (单因子评价法). 《地表水环境质量评价办法（试行）》
(环办〔2011〕22号) adds which parameters count and the 水质状况 words. See
``docs/standards.md`` §4 ([S+M]; Table 1 values also match
the public transcription of the official text).

Rules applied here:

* "≤" parameters: class = the first (best) class whose limit is ≥ the value,
  so a value on a limit belongs to the better class (COD 15 mg/L is class I,
  since I and II share the limit 15).
* DO (溶解氧) is "≥": class = the first class whose limit is ≤ the value.
* pH: 6–9 for every class; inside it pH does not lower the class (class I),
  outside it the water is 劣V.
* Above the class V limit → 6, written 劣V.
* [M] 评价办法 一(一)1 水质评价指标: the overall class uses the 21 items of
  Table 1 other than 水温, 总氮 and 粪大肠菌群; those are reference parameters
  (参考指标) assessed on their own, for lakes and rivers alike, and rivers
  have no TN limit at all. ``include_reference=True`` counts TN
  (lakes/reservoirs) and 粪大肠菌群 in the overall class instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from alerts.errors import IndicatorError

__all__ = [
    "CLASS_LABELS",
    "GB3838_TABLE1",
    "NOT_CLASSIFIED",
    "REFERENCE_PARAMS",
    "STATUS",
    "WaterClassResult",
    "WaterParameter",
    "Waterbody",
    "factors_worse_than",
    "single_factor_class",
    "water_class",
    "worse_than_target",
]

Waterbody = Literal["river", "lake", "reservoir"]
"""``"river"`` (河流) or ``"lake"`` / ``"reservoir"`` (湖、库; same limits)."""

WORSE_THAN_V = 6
"""Class number used for 劣V (worse than class V)."""

CLASS_LABELS: Mapping[int, str] = MappingProxyType({1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "劣V"})

# 水质状况 by class, 评价办法 Table 1 [M]: I–II 优, III 良好, IV 轻度污染,
# V 中度污染, 劣V 重度污染 (docs/standards.md §4).
STATUS: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        1: ("优", "excellent"),
        2: ("优", "excellent"),
        3: ("良好", "good"),
        4: ("轻度污染", "lightly polluted"),
        5: ("中度污染", "moderately polluted"),
        6: ("重度污染", "heavily polluted"),
    }
)

Limits = tuple[float, ...]
"""Class I–V limits (five values), or the (low, high) bounds of a range."""


@dataclass(frozen=True, slots=True)
class WaterParameter:
    """One row of GB 3838-2002 Table 1.

    Attributes:
        key: Parameter key used in value mappings, e.g. ``"nh3n"``.
        name_zh: Name as in Table 1.
        name_en: English name.
        unit: Unit of the limits (and of the values passed in).
        kind: ``"max"`` (≤ limit), ``"min"`` (≥ limit, DO) or ``"range"`` (pH).
        limits: Class I–V limits for rivers (five values); for ``"range"``
            the ``(low, high)`` bounds. ``None`` where Table 1 has no river
            limit (TN).
        lake_limits: Limits for lakes and reservoirs where they differ
            (TP, TN), else ``None`` (same as ``limits``).
        reference: 评价办法 reference parameter (参考指标), left out of the
            overall class by default.
    """

    key: str
    name_zh: str
    name_en: str
    unit: str
    kind: Literal["max", "min", "range"]
    limits: Limits | None
    lake_limits: Limits | None = None
    reference: bool = False

    def __post_init__(self) -> None:
        size = 2 if self.kind == "range" else 5
        for limits in (self.limits, self.lake_limits):
            if limits is not None and len(limits) != size:
                raise IndicatorError(f"{self.key}: {self.kind} limits need {size} values, got {limits}")

    def limits_for(self, waterbody: Waterbody) -> Limits | None:
        """Class I–V limits that apply to the water body type."""
        if waterbody != "river" and self.lake_limits is not None:
            return self.lake_limits
        return self.limits


_MG_L = "mg/L"


def _max(
    key: str,
    name_zh: str,
    name_en: str,
    limits: Limits | None,
    *,
    lake: Limits | None = None,
    unit: str = _MG_L,
    reference: bool = False,
) -> WaterParameter:
    """A "≤" row of Table 1 (every row except pH and DO)."""
    return WaterParameter(key, name_zh, name_en, unit, "max", limits, lake, reference)


# GB 3838-2002 Table 1 (基本项目标准限值), limits of classes I, II, III, IV, V;
# the trailing number is Table 1's 序号. Item 1 水温 (a weekly man-made
# change, not a level) is in NOT_CLASSIFIED below.
_TABLE1: tuple[WaterParameter, ...] = (
    # 2: pH 6~9 (无量纲), the same for every class.
    WaterParameter("ph", "pH值", "pH", "", "range", (6, 9)),
    # 3: "≥"; class I is "饱和率90% (或7.5)" — the 7.5 mg/L alternative is used.
    WaterParameter("do", "溶解氧", "dissolved oxygen", _MG_L, "min", (7.5, 6, 5, 3, 2)),
    _max("codmn", "高锰酸盐指数", "permanganate index", (2, 4, 6, 10, 15)),  # 4
    _max("cod", "化学需氧量(COD)", "chemical oxygen demand", (15, 15, 20, 30, 40)),  # 5
    _max("bod5", "五日生化需氧量(BOD5)", "BOD5", (3, 3, 4, 6, 10)),  # 6
    _max("nh3n", "氨氮(NH3-N)", "ammonia nitrogen", (0.15, 0.5, 1.0, 1.5, 2.0)),  # 7
    # 8: river limits; "湖、库" limits in brackets in Table 1.
    _max(
        "tp",
        "总磷(以P计)",
        "total phosphorus",
        (0.02, 0.1, 0.2, 0.3, 0.4),
        lake=(0.01, 0.025, 0.05, 0.1, 0.2),
    ),
    # 9: "总氮(湖、库,以N计)" — lakes and reservoirs only; a 评价办法 reference parameter.
    _max("tn", "总氮(湖、库,以N计)", "total nitrogen", None, lake=(0.2, 0.5, 1.0, 1.5, 2.0), reference=True),
    _max("cu", "铜", "copper", (0.01, 1.0, 1.0, 1.0, 1.0)),  # 10
    _max("zn", "锌", "zinc", (0.05, 1.0, 1.0, 2.0, 2.0)),  # 11
    _max("fluoride", "氟化物(以F-计)", "fluoride", (1.0, 1.0, 1.0, 1.5, 1.5)),  # 12
    _max("se", "硒", "selenium", (0.01, 0.01, 0.01, 0.02, 0.02)),  # 13
    _max("as", "砷", "arsenic", (0.05, 0.05, 0.05, 0.1, 0.1)),  # 14
    _max("hg", "汞", "mercury", (0.00005, 0.00005, 0.0001, 0.001, 0.001)),  # 15
    _max("cd", "镉", "cadmium", (0.001, 0.005, 0.005, 0.005, 0.01)),  # 16
    _max("cr6", "铬(六价)", "chromium (VI)", (0.01, 0.05, 0.05, 0.05, 0.1)),  # 17
    _max("pb", "铅", "lead", (0.01, 0.01, 0.05, 0.05, 0.1)),  # 18
    _max("cyanide", "氰化物", "cyanide", (0.005, 0.05, 0.2, 0.2, 0.2)),  # 19
    _max("volatile_phenol", "挥发酚", "volatile phenol", (0.002, 0.002, 0.005, 0.01, 0.1)),  # 20
    _max("petroleum", "石油类", "petroleum", (0.05, 0.05, 0.05, 0.5, 1.0)),  # 21
    _max("las", "阴离子表面活性剂", "anionic surfactant (LAS)", (0.2, 0.2, 0.2, 0.3, 0.3)),  # 22
    _max("sulfide", "硫化物", "sulfide", (0.05, 0.1, 0.2, 0.5, 1.0)),  # 23
    # 24: 个/L; a 评价办法 reference parameter.
    _max(
        "fecal_coliform",
        "粪大肠菌群",
        "fecal coliforms",
        (200, 2000, 10000, 20000, 40000),
        unit="个/L",
        reference=True,
    ),
)

GB3838_TABLE1: Mapping[str, WaterParameter] = MappingProxyType({p.key: p for p in _TABLE1})
"""GB 3838-2002 Table 1 rows by parameter key, in Table 1 order."""

REFERENCE_PARAMS: frozenset[str] = frozenset(p.key for p in _TABLE1 if p.reference) | {"water_temp"}
"""[M] 评价办法 一(一)1 参考指标: 水温, 总氮, 粪大肠菌群 — outside the overall class."""

NOT_CLASSIFIED: frozenset[str] = frozenset({"water_temp"})
"""Keys accepted by :func:`water_class` but not classifiable from one value
(Table 1 item 1 水温 limits the man-made weekly change, not the level)."""


def _waterbody(waterbody: str) -> Waterbody:
    if waterbody == "river":
        return "river"
    if waterbody in ("lake", "reservoir"):
        return "lake"
    raise IndicatorError(f"waterbody must be 'river', 'lake' or 'reservoir', not {waterbody!r}")


def _class_label(water_class: int | str) -> int:
    if isinstance(water_class, str):
        for number, label in CLASS_LABELS.items():
            if water_class == label:
                return number
        raise IndicatorError(f"unknown class label {water_class!r}; known: {list(CLASS_LABELS.values())}")
    if isinstance(water_class, bool) or water_class not in CLASS_LABELS:
        raise IndicatorError(f"class must be 1..6 or a label I..劣V, not {water_class!r}")
    return water_class


def single_factor_class(param: str, value: float, waterbody: Waterbody = "river") -> int:
    """Class of one parameter value (GB 3838-2002 Table 1, single-factor method).

    Args:
        param: Parameter key, e.g. ``"do"``, ``"nh3n"``, ``"tp"`` (see
            :data:`GB3838_TABLE1`).
        value: Measured value in the parameter's unit (mg/L; pH unitless;
            粪大肠菌群 个/L).
        waterbody: ``"river"``, ``"lake"`` or ``"reservoir"``; only TP and TN
            differ.

    Returns:
        1..5 for classes I–V, 6 for 劣V. A value on a limit belongs to the
        better class.

    Raises:
        IndicatorError: Unknown parameter, a parameter with no limit for the
            water body (TN in a river, 水温), or a negative / non-finite value.
    """
    body = _waterbody(waterbody)
    spec = GB3838_TABLE1.get(param)
    if spec is None:
        if param in NOT_CLASSIFIED:
            raise IndicatorError(f"{param} is not classified by a single value (GB 3838-2002 Table 1 item 1)")
        raise IndicatorError(f"unknown GB 3838 parameter {param!r}; known: {list(GB3838_TABLE1)}")
    limits = spec.limits_for(body)
    if limits is None:
        raise IndicatorError(f"GB 3838-2002 Table 1 has no {body} limit for {param} ({spec.name_zh})")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise IndicatorError(f"{param}: value must be a finite number ≥ 0, not {value!r}")

    if spec.kind == "range":
        low, high = limits
        # pH 6~9 holds for every class: inside it pH cannot lower the class.
        return 1 if low <= value <= high else WORSE_THAN_V
    for number, limit in enumerate(limits, start=1):
        if (value >= limit) if spec.kind == "min" else (value <= limit):
            return number
    return WORSE_THAN_V


@dataclass(frozen=True, slots=True)
class WaterClassResult:
    """Overall GB 3838-2002 class of one sample.

    Attributes:
        water_class: 1..5 for I–V, 6 for 劣V; the worst assessed factor.
        label: ``"I"`` … ``"V"``, ``"劣V"``.
        status_zh: 水质状况 (评价办法): 优, 良好, 轻度污染, 中度污染, 重度污染.
        status_en: English status.
        deciding_factors: 定类因子 — the parameters at the worst class, in
            Table 1 order.
        factor_classes: Class of every parameter in the overall class.
        reference_classes: Class of reference parameters (TN for lakes,
            粪大肠菌群) when they are reported on their own.
        waterbody: ``"river"`` or ``"lake"``.
    """

    water_class: int
    label: str
    status_zh: str
    status_en: str
    deciding_factors: tuple[str, ...]
    factor_classes: Mapping[str, int]
    reference_classes: Mapping[str, int]
    waterbody: str


def water_class(
    values: Mapping[str, float],
    waterbody: Waterbody = "river",
    *,
    include_reference: bool = False,
) -> WaterClassResult:
    """Overall water class of a sample: the worst single-factor class.

    Args:
        values: Measured values by parameter key (see :data:`GB3838_TABLE1`);
            ``"water_temp"`` is accepted and ignored (not classifiable).
        waterbody: ``"river"``, ``"lake"`` or ``"reservoir"``.
        include_reference: [M] Count TN (lakes/reservoirs only) and 粪大肠菌群
            in the overall class. By default they are reported separately in
            ``reference_classes`` (评价办法 一(一)1). River TN is never
            classified: Table 1 has no river limit.

    Returns:
        The :class:`WaterClassResult`.

    Raises:
        IndicatorError: Unknown keys, bad values, or no parameter left to
            assess.
    """
    body = _waterbody(waterbody)
    counted: dict[str, int] = {}
    reference: dict[str, int] = {}
    for key in values:
        if key not in GB3838_TABLE1 and key not in NOT_CLASSIFIED:
            raise IndicatorError(f"unknown GB 3838 parameter {key!r}; known: {list(GB3838_TABLE1)}")
    for key, spec in GB3838_TABLE1.items():
        if key not in values or spec.limits_for(body) is None:
            continue  # not measured, or no limit here (river TN)
        number = single_factor_class(key, values[key], body)
        if spec.reference and not include_reference:
            reference[key] = number
        else:
            counted[key] = number
    if not counted:
        raise IndicatorError("no parameter to assess: give at least one GB 3838 Table 1 parameter")

    worst = max(counted.values())
    status_zh, status_en = STATUS[worst]
    return WaterClassResult(
        water_class=worst,
        label=CLASS_LABELS[worst],
        status_zh=status_zh,
        status_en=status_en,
        deciding_factors=tuple(key for key, number in counted.items() if number == worst),
        factor_classes=MappingProxyType(counted),
        reference_classes=MappingProxyType(reference),
        waterbody=body,
    )


def worse_than_target(result: WaterClassResult, target_class: int | str) -> bool:
    """Whether the sample misses its target class (水质目标).

    Args:
        result: From :func:`water_class`.
        target_class: Target as 1..6 or a label ``"I"`` … ``"劣V"``.

    Returns:
        ``True`` if the overall class is worse (higher) than the target.

    Raises:
        IndicatorError: An invalid target.
    """
    return result.water_class > _class_label(target_class)


def factors_worse_than(result: WaterClassResult, target_class: int | str) -> tuple[str, ...]:
    """Parameters whose class is worse than the target (超标因子), worst first.

    Args:
        result: From :func:`water_class`.
        target_class: Target as 1..6 or a label ``"I"`` … ``"劣V"``.

    Returns:
        Parameter keys, ordered by class (worst first), then Table 1 order.

    Raises:
        IndicatorError: An invalid target.
    """
    target = _class_label(target_class)
    over = [(number, key) for key, number in result.factor_classes.items() if number > target]
    # sorted() is stable, so equal classes keep Table 1 order.
    return tuple(key for _, key in sorted(over, key=lambda item: -item[0]))
