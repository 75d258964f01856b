"""Pollution-source indicators: hourly means against the permit, and discharge loads (issue 19).

A source's discharge permit (``devices.permits``; in the device's attributes as
``permit``) gives, per pollutant, an hourly-mean concentration limit and load caps in
kg per day, month and year. From each hourly upload (HJ 212 CN 2061: ``hg_hour`` …) this
module derives:

* ``{p}_hour_limit`` and ``{p}_hour_excess`` (hourly mean minus its limit; > 0 is an
  exceedance; a limit of 0 is 不得检出, so any detection exceeds it);
* the hour's load ``{p}_load_hour_kg`` = hourly mean × the hour's discharged volume, and
  its running sums ``{p}_load_day_kg``, ``{p}_load_month_kg``, ``{p}_load_year_kg`` over
  the local (Beijing) calendar day, month and year;
* against each cap, ``{p}_load_{day,month,year}_ratio`` (≥ 1: the cap is reached) and, at
  the current hour's rate for the rest of the period, ``{p}_load_{day,year}_forecast_ratio``.

Units: concentrations are canonical (mg/L for wastewater, mg/m³ for flue gas), volumes
m³. mg/L × m³ = g (1 m³ = 1,000 L); mg/m³ × m³ = mg = 0.001 g. The hour's volume is the
flow's own discharge amount (``flow_hour_cou``, m³) when the station sent it, else the
hourly mean flow × 3,600 s.

Readings flagged by the instrument never get here (the engine keeps every non-N flag of a
source from the rules), so a flagged hour neither exceeds nor adds to a load: the load
is that of valid hours.

Pure: the running sums live in the rule snapshot the worker persists with the alerts in
one transaction, so a replayed batch (below the device's watermark) adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

__all__ = ["G_PER_CONC_M3", "in_operating_hours", "interval_load_g", "period_bounds", "source_indicators"]

Medium = Literal["water", "gas"]
Snapshot = MutableMapping[str, list[float]]

#: Grams per (canonical concentration unit × m³): mg/L × m³ = g; mg/m³ × m³ = mg.
G_PER_CONC_M3: Mapping[str, float] = {"water": 1.0, "gas": 0.001}
_CST = timezone(timedelta(hours=8))  # Beijing time has no DST; permits count local days
_HOUR_S = 3600.0


def interval_load_g(conc: float, volume_m3: float, medium: Medium) -> float:
    """Mass discharged in an interval, in g.

    Args:
        conc: Mean concentration, mg/L (water) or mg/m³ (gas).
        volume_m3: Volume discharged in the interval, m³.
        medium: ``water`` or ``gas``.
    """
    return conc * volume_m3 * G_PER_CONC_M3[medium]


def period_bounds(t: float) -> dict[str, tuple[float, float]]:
    """Start and end (epoch s) of the local day, month and year that contain ``t``."""
    local = datetime.fromtimestamp(t, tz=UTC).astimezone(_CST)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    year = month.replace(month=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return {
        "day": (day.timestamp(), (day + timedelta(days=1)).timestamp()),
        "month": (month.timestamp(), next_month.timestamp()),
        "year": (year.timestamp(), year.replace(year=year.year + 1).timestamp()),
    }


def _fresh(snap: Snapshot, metric: str, t: float) -> float | None:
    """The metric's value if it arrived at ``t`` (not an older value still in the snapshot)."""
    cell = snap.get(metric)
    return cell[0] if cell is not None and cell[1] == t else None


def _volume_m3(snap: Snapshot, t: float, flow_m3_per_unit_s: float) -> float | None:
    cou = _fresh(snap, "flow_hour_cou", t)
    if cou is not None:
        return cou
    flow = _fresh(snap, "flow_hour", t)
    return None if flow is None else flow * flow_m3_per_unit_s * _HOUR_S


def source_indicators(
    snap: Snapshot, attrs: Mapping[str, Any], t: float, *, medium: Medium, flow_m3_per_unit_s: float
) -> dict[str, float]:
    """Derived metrics of one source at event time ``t`` (see the module docstring).

    Args:
        snap: The device's latest values (``[value, t, prev, prev_t]`` per metric).
        attrs: The device's attributes, with its ``permit`` if it has one.
        t: Event time (epoch s) of the readings just applied.
        medium: ``water`` (concentrations in mg/L) or ``gas`` (mg/m³).
        flow_m3_per_unit_s: m³ per (unit of the ``flow`` metric × s): 0.001 for L/s, 1 for m³/s.

    Returns:
        The derived values; empty without a permit or a fresh hourly mean.
    """
    permit = attrs.get("permit")
    if not isinstance(permit, Mapping):
        return {}
    limits = permit.get("limits")
    if not isinstance(limits, Mapping):
        return {}
    out: dict[str, float] = {}
    bounds: dict[str, tuple[float, float]] | None = None
    volume: float | None = None
    for metric, lim in limits.items():
        if not isinstance(lim, Mapping):
            continue
        conc = _fresh(snap, f"{metric}_hour", t)
        if conc is None:
            continue
        limit = lim.get("limit")
        if isinstance(limit, int | float):
            out[f"{metric}_hour_limit"] = float(limit)
            out[f"{metric}_hour_excess"] = conc - float(limit)
        if volume is None:
            volume = _volume_m3(snap, t, flow_m3_per_unit_s)
            if volume is None:
                continue
        if bounds is None:
            bounds = period_bounds(t)
        load_kg = interval_load_g(conc, volume, medium) / 1000.0
        out[f"{metric}_load_hour_kg"] = load_kg
        for period, (start, end) in bounds.items():
            key = f"{metric}_load_{period}_kg"
            prev = snap.get(key)
            # A sum from an earlier period restarts; one from this period grows.
            total = load_kg + (prev[0] if prev is not None and start <= prev[1] < end else 0.0)
            out[key] = total
            cap = lim.get(f"{period}_kg")
            if not isinstance(cap, int | float) or cap <= 0:
                continue
            out[f"{metric}_load_{period}_ratio"] = total / cap
            if period != "month":
                hours_left = max(0.0, (end - (t + _HOUR_S)) / _HOUR_S)
                out[f"{metric}_load_{period}_forecast_ratio"] = (total + load_kg * hours_left) / cap
    return out


def in_operating_hours(spec: str, t: float) -> bool:
    """Whether ``t`` (epoch s) falls in a source's operating hours, in Beijing time.

    Args:
        spec: ``"HH:MM-HH:MM"``; the end may be ``24:00``, and an end before the start
            spans midnight (``"22:00-06:00"``). Several ranges are comma-separated.

    Raises:
        ValueError: a malformed spec.
    """
    local = datetime.fromtimestamp(t, tz=UTC).astimezone(_CST)
    minute = local.hour * 60 + local.minute
    for part in spec.split(","):
        start_text, sep, end_text = part.strip().partition("-")
        if not sep:
            raise ValueError(f"operating hours {spec!r}: expected HH:MM-HH:MM")
        start, end = _minutes(start_text), _minutes(end_text)
        if (start <= minute < end) if start <= end else (minute >= start or minute < end):
            return True
    return False


def _minutes(text: str) -> int:
    hh, sep, mm = text.strip().partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or int(mm) > 59 or int(hh) * 60 + int(mm) > 24 * 60:
        raise ValueError(f"operating hours: {text!r} is not HH:MM")
    return int(hh) * 60 + int(mm)
