"""Derived metrics: the standards-based indicators, computed per device from its
latest values and attributes, so that rules can threshold on them like any metric.

* air: ``aqi`` (indicative real-time AQI from the latest values, each taken as
  the average a real-time report of the device's ``aqi_version`` uses for it:
  1 h means under HJ 633-2026, and under HJ 633-2012 the 24 h sliding mean for
  PM2.5/PM10) and ``aqi_level`` (HJ 633 Table 2).
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
readings that produced it. A deriver that cannot compute its indicator (an
unknown standard or zone, a concentration the standard defines no IAQI for)
raises :class:`~alerts.errors.IndicatorError`; :func:`derive` logs it and hands
it to the caller's ``on_error`` (the stream worker counts it), and the
device's other metrics and rules carry on.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

Snapshot = MutableMapping[str, list[float]]
Deriver = Callable[[Snapshot, Mapping[str, Any], float], dict[str, float]]

_CST = timezone(timedelta(hours=8))  # Asia/Shanghai has no DST


def _v(snap: Snapshot, metric: str) -> float | None:
    cell = snap.get(metric)
    return None if cell is None else cell[0]


def _air(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    # Bare pollutant names: each stands for the average the version's real-time
    # report uses (HJ 633-2012: PM 24 h sliding means; 2026: 1 h means), so the
    # latest value is read as that average whichever standard the device follows.
    conc: dict[str, float] = {}
    for metric in aqi_mod.POLLUTANTS:
        v = _v(snap, metric)
        if v is not None and v >= 0:
            conc[metric] = v
    if not conc:
        return {}
    version = str(attrs.get("aqi_version", aqi_mod.DEFAULT_VERSION))
    res = aqi_mod.aqi(conc, version=version, mode="hourly")
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
        grade = blackodor.grade_sample(sample, float(depth) if isinstance(depth, int | float) else None)
        out["black_odor_grade"] = float(grade)
    values = {k: v for k in ("ph", "do", "codmn", "cod", "nh3n", "tp", "tn") if (v := _v(snap, k)) is not None}
    if not values or "transparency" in snap:
        return out
    waterbody = _GB3838_BODY.get(str(attrs.get("waterbody", "river")), "river")
    res = water_class(values, waterbody=waterbody)  # type: ignore[arg-type]
    target = int(attrs.get("target_class", 3))
    out["water_class"] = float(res.water_class)
    out["water_class_over_target"] = float(res.water_class - target)
    return out


def _noise(snap: Snapshot, attrs: Mapping[str, Any], t: float) -> dict[str, float]:
    zone = str(attrs.get("zone", "2"))
    out: dict[str, float] = {}
    day, night = noise_limit(zone, "day"), noise_limit(zone, "night")
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


def derive(
    device_class: str,
    snap: Snapshot,
    attrs: Mapping[str, Any],
    t: float,
    *,
    on_error: Callable[[str, IndicatorError], None] | None = None,
) -> set[str]:
    """Update derived metrics in the snapshot; returns the names that changed.

    Args:
        device_class: The device's class (picks the deriver).
        snap: Latest values per metric (updated in place).
        attrs: The device's attributes (standard version, zone, levels …).
        t: Event time (Unix s) of the readings that changed the snapshot.
        on_error: Called with the class and the error when the class's
            indicators cannot be computed (then nothing is derived this time);
            without it the error is logged here.
    """
    fn = DERIVERS.get(device_class)
    if fn is None:
        return set()
    try:
        derived = fn(snap, attrs, t)
    except IndicatorError as exc:
        if on_error is None:
            log.warning("derived indicators of class %s not computed: %s", device_class, exc)
        else:
            on_error(device_class, exc)
        return set()
    changed = set()
    for name, value in derived.items():
        prev = snap.get(name)
        if prev is None or prev[0] != value or prev[1] != t:
            snap[name] = [value, t, prev[0], prev[1]] if prev else [value, t, math.nan, math.nan]
            changed.add(name)
    return changed
