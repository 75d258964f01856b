"""Derived metrics: the standards-based indicators, computed per device from its
latest values and attributes, so that rules can threshold on them like any metric.

* air: ``aqi`` (indicative real-time AQI per HJ 633-2026 from the latest values
  taken as 1-hour concentrations) and ``aqi_level`` (HJ 633 Table 2).
  The reported hourly/daily AQI is computed from stored hourly means
  (:mod:`alerts.indicators.aqi`); this one is the early warning.
* water: ``water_class`` (GB 3838-2002 single-factor method, 6 = 劣V) and
  ``water_class_over_target`` (class minus the station's target class); outfall and
  catchment stations are assessed as rivers, reservoirs as lakes. Black-odour points
  (those measuring transparency or ORP) get ``black_odor_grade`` instead (0 not, 1 light,
  2 heavy; 城市黑臭水体整治工作指南 2015, :mod:`alerts.indicators.blackodor`).
* noise: ``ld_excess_db`` / ``ln_excess_db`` over the GB 3096-2008 limit of the
  device's functional zone, and ``night_lmax_excess_db`` (night-time maximum
  over the night limit + 15 dB(A), GB 3096-2008 §5.2).
* manhole: ``water_level_state`` (0 normal, 1 warning, 2 danger) from the
  device's warning/danger levels.
* pole: ``lamp_fault`` (1 when on with no current, or current while off).
* wastewater / fluegas (pollution sources): ``{p}_hour_excess`` over the permit's
  limit and the discharge loads against its caps (:mod:`alerts.indicators.source`).

Pure functions; each writes into the snapshot with the event time of the
readings that produced it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from alerts.errors import IndicatorError
from alerts.indicators import aqi as aqi_mod
from alerts.indicators import blackodor
from alerts.indicators.noise import is_daytime, noise_limit
from alerts.indicators.source import source_indicators
from alerts.indicators.water import water_class

__all__ = ["DERIVERS", "derive"]

Snapshot = MutableMapping[str, list[float]]
Deriver = Callable[[Snapshot, Mapping[str, Any], float], dict[str, float]]

_CST = timezone(timedelta(hours=8))  # Asia/Shanghai has no DST


def _v(snap: Snapshot, metric: str) -> float | None:
    cell = snap.get(metric)
    return None if cell is None else cell[0]


def _air(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    conc: dict[tuple[str, str], float] = {}
    for metric, pollutant in (
        ("pm25", "pm25"),
        ("pm10", "pm10"),
        ("so2", "so2"),
        ("no2", "no2"),
        ("co", "co"),
        ("o3", "o3"),
    ):
        v = _v(snap, metric)
        if v is not None and v >= 0:
            conc[(pollutant, "1h")] = v
    if not conc:
        return {}
    version = str(attrs.get("aqi_version", aqi_mod.DEFAULT_VERSION))
    try:
        res = aqi_mod.aqi(conc, version=version, mode="hourly")
    except IndicatorError:
        return {}
    return {"aqi": float(res.aqi), "aqi_level": float(res.level)}


#: Station siting (the ``waterbody`` attribute) → the GB 3838 rules it is assessed by: outfalls
#: (入河排污口) and small-catchment sections are river sections; reservoirs use the lake rules.
_GB3838_BODY = {"river": "river", "outfall": "river", "catchment": "river", "lake": "lake", "reservoir": "reservoir"}


def _water(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    out: dict[str, float] = {}
    # Only black-odour points measure transparency or ORP: other stations are not graded.
    if _v(snap, "transparency") is not None or _v(snap, "orp") is not None:
        sample = {k: v for k in blackodor.INDICATORS if (v := _v(snap, k)) is not None}
        depth = attrs.get("water_depth_cm")
        try:
            grade = blackodor.grade_sample(sample, float(depth) if isinstance(depth, int | float) else None)
            out["black_odor_grade"] = float(grade)
        except IndicatorError:
            pass
    values = {k: v for k in ("ph", "do", "codmn", "cod", "nh3n", "tp", "tn") if (v := _v(snap, k)) is not None}
    if not values or "transparency" in snap:
        return out
    waterbody = _GB3838_BODY.get(str(attrs.get("waterbody", "river")), "river")
    try:
        res = water_class(values, waterbody=waterbody)  # type: ignore[arg-type]
    except IndicatorError:
        return out
    target = int(attrs.get("target_class", 3))
    out["water_class"] = float(res.water_class)
    out["water_class_over_target"] = float(res.water_class - target)
    return out


def _noise(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    zone = str(attrs.get("zone", "2"))
    out: dict[str, float] = {}
    try:
        day, night = noise_limit(zone, "day"), noise_limit(zone, "night")
    except IndicatorError:
        return {}
    if (ld := _v(snap, "ld")) is not None:
        out["ld_excess_db"] = ld - day
    if (ln := _v(snap, "ln")) is not None:
        out["ln_excess_db"] = ln - night
    local = datetime.fromtimestamp(t, tz=UTC).astimezone(_CST)
    lmax = _v(snap, "lmax")
    if lmax is not None:
        out["night_lmax_excess_db"] = (lmax - (night + 15)) if not is_daytime(local) else -math.inf
    leq = _v(snap, "leq")
    if leq is not None:
        out["leq_excess_db"] = leq - (day if is_daytime(local) else night)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _manhole(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    level = _v(snap, "water_level")
    if level is None:
        dist = _v(snap, "water_distance")
        depth = attrs.get("depth_m")
        if dist is None or depth is None:
            return {}
        level = float(depth) - dist / 1000.0
    # Levels are heights of water in the well (m); thresholds from the device's attributes.
    warning = float(attrs.get("warning_level_m", 1.0))
    danger = float(attrs.get("danger_level_m", 1.5))
    state = 2.0 if level >= danger else 1.0 if level >= warning else 0.0
    return {"water_level_state": state}


def _pole(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    on, current = _v(snap, "lamp_on"), _v(snap, "current")
    if on is None or current is None:
        return {}
    # [M] 0.05 A: below it a lamp draws nothing (alerts.indicators.pole).
    fault = (on >= 0.5 and current < 0.05) or (on < 0.5 and current >= 0.05)
    return {"lamp_fault": 1.0 if fault else 0.0}


def _wastewater(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    # flow is in L/s (wastewater-source model): 0.001 m³ per L.
    return source_indicators(snap, attrs, t, medium="water", flow_m3_per_unit_s=0.001)


def _fluegas(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    # flow is in m³/s (fluegas-source model).
    return source_indicators(snap, attrs, t, medium="gas", flow_m3_per_unit_s=1.0)


DERIVERS: dict[str, Deriver] = {
    "wastewater": _wastewater,
    "fluegas": _fluegas,
    "air": _air,
    "water": _water,
    "noise": _noise,
    "manhole": _manhole,
    "pole": _pole,
}


def derive(device_class: str, snap: Snapshot, attrs: Mapping[str, Any], t: float) -> set[str]:
    """Update derived metrics in the snapshot; returns the names that changed."""
    fn = DERIVERS.get(device_class)
    if fn is None:
        return set()
    changed = set()
    for name, value in fn(snap, attrs, t).items():
        prev = snap.get(name)
        if prev is None or prev[0] != value or prev[1] != t:
            snap[name] = [value, t, prev[0], prev[1]] if prev else [value, t, math.nan, math.nan]
            changed.add(name)
    return changed
