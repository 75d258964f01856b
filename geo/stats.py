"""Per-area figures for the map and the vitals board, computed in PostgreSQL.

The latest value of a metric is read from ``rule_state.snapshot``, where the
rule engine keeps ``{"metric": [value, event_time, prev_value, prev_time]}``
per device, derived indicators (``aqi``, ``water_class_over_target`` …)
included. Reading the snapshot instead of the readings tables makes every
figure here one index-free pass over small per-device rows, however many
readings exist.

Only devices that are not decommissioned count. Each function takes an open
async connection, so a route can run several in one checkout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from geo.status import FRESH_CADENCES, STALE_CADENCES

__all__ = [
    "DERIVED_METRICS",
    "DistrictFigures",
    "aggregate",
    "device_counts",
    "district_figures",
    "manhole_open_alerts",
    "noise_exceedances_since",
    "open_by_severity",
    "readings_last_minute",
]

# Derived metrics alerts.derive writes into the snapshot, per device class
# (its module docstring is the source); accepted by aggregate() besides the
# model metrics.
DERIVED_METRICS: dict[str, frozenset[str]] = {
    "air": frozenset({"aqi", "aqi_level"}),
    "water": frozenset({"water_class", "water_class_over_target"}),
    "noise": frozenset({"ld_excess_db", "ln_excess_db", "night_lmax_excess_db"}),
    "manhole": frozenset({"water_level_state"}),
    "pole": frozenset({"lamp_fault"}),
}

# The snapshot's latest value of metric %(metric)s, or NULL if absent/NaN-as-null.
_LATEST = (
    "case when jsonb_typeof(rs.snapshot -> %(metric)s -> 0) = 'number'"
    " then (rs.snapshot -> %(metric)s ->> 0)::float8 end"
)

_LIVE = "d.state <> 'decommissioned'"
# Fence-presence alerts (alerts.geofence: "device is inside fence X", severity info)
# are events, not problems: they must not colour the map or count as open alerts.
# Written for queries run with parameters ("%%" is a literal "%").
_NOT_FENCE = "rule not like 'geofence.%%'"


@dataclass(frozen=True, slots=True)
class DistrictFigures:
    """What the district choropleth shows.

    Attributes:
        devices: Devices registered in the district (not decommissioned).
        open_alerts: Alerts in the district not resolved.
        aqi: Highest indicative AQI over its air devices, or None.
        water_ok_share: Share of its water stations (with a value) meeting
            their target class, or None.
        water_stations: Water stations with a value.
    """

    devices: int = 0
    open_alerts: int = 0
    aqi: float | None = None
    water_ok_share: float | None = None
    water_stations: int = 0


async def district_figures(conn: AsyncConnection[Any], *, max_age_s: float) -> dict[str, DistrictFigures]:
    """Devices, open alerts, worst AQI and water compliance per district.

    Args:
        conn: An open connection.
        max_age_s: Snapshots not updated for longer are ignored for AQI and
            water, so a station that went silent a week ago cannot paint
            its district.

    Returns:
        Figures by district code; districts with nothing at all are absent.
    """
    out: dict[str, dict[str, Any]] = {}
    query = sql.SQL(
        """
        with devs as (
            select d.district, count(*) as n from devices d where {live} group by 1
        ), alerts_open as (
            select district, count(*) as n from alerts where state <> 'resolved' and {not_fence} group by 1
        ), latest as (
            select d.district, d.device_class,
                   case when jsonb_typeof(rs.snapshot -> 'aqi' -> 0) = 'number'
                        then (rs.snapshot -> 'aqi' ->> 0)::float8 end as aqi,
                   case when jsonb_typeof(rs.snapshot -> 'water_class_over_target' -> 0) = 'number'
                        then (rs.snapshot -> 'water_class_over_target' ->> 0)::float8 end as over
            from devices d join rule_state rs on rs.device_code = d.code
            where {live} and d.device_class in ('air', 'water')
              and rs.updated_at >= now() - make_interval(secs => %(max_age)s)
        ), env as (
            select district,
                   max(aqi) filter (where device_class = 'air') as aqi,
                   avg((over <= 0)::int::float8) filter (where device_class = 'water' and over is not null) as ok,
                   count(over) filter (where device_class = 'water') as stations
            from latest group by 1
        )
        select coalesce(devs.district, alerts_open.district, env.district),
               coalesce(devs.n, 0), coalesce(alerts_open.n, 0), env.aqi, env.ok, coalesce(env.stations, 0)
        from devs
        full join alerts_open on alerts_open.district = devs.district
        full join env on env.district = coalesce(devs.district, alerts_open.district)
        """
    ).format(live=sql.SQL(_LIVE), not_fence=sql.SQL(_NOT_FENCE))
    rows = await (await conn.execute(query, {"max_age": max_age_s})).fetchall()
    for district, devices, alerts, aqi, ok, stations in rows:
        out[district] = {
            "devices": int(devices),
            "open_alerts": int(alerts),
            "aqi": None if aqi is None else float(aqi),
            "water_ok_share": None if ok is None else float(ok),
            "water_stations": int(stations),
        }
    return {code: DistrictFigures(**values) for code, values in out.items()}


async def device_counts(conn: AsyncConnection[Any], cadences: Mapping[str, int], *, now: datetime) -> dict[str, int]:
    """City-wide liveness counts with the thresholds of :func:`geo.status.classify` (session included).

    Args:
        conn: An open connection.
        cadences: Reporting cadence in seconds per model key as stored in
            ``devices.model`` (``id@version`` and bare ``id``).
        now: The caller's clock. ``last_seen`` is a receive time stamped by the ingest
            side's clock, not the database's, so "how long ago" is measured from here
            (as :func:`geo.status.classify` does for the map), not from ``now()``.

    Returns:
        ``{"fresh", "stale", "offline", "unknown", "total"}``; ``unknown``
        counts devices never seen or of an unknown model.
    """
    query = sql.SQL(
        """
        with j as (
            select l.last_seen, m.cadence_s, s.connected,
                   -- the last will with no data after it: offline at once (geo.status.classify)
                   coalesce(not s.connected and s.status_at >= l.last_seen, false) as will
            from devices d
            left join device_liveness l on l.code = d.code
            left join device_sessions s on s.code = d.code
            left join unnest(%(models)s::text[], %(cadences)s::int[]) as m(model, cadence_s) on m.model = d.model
            where {live}
        )
        select
            count(*) filter (where not will and last_seen >= %(now)s - make_interval(secs => {fresh} * cadence_s)),
            count(*) filter (where not will and last_seen < %(now)s - make_interval(secs => {fresh} * cadence_s)
                               and (coalesce(connected, false)
                                    or last_seen >= %(now)s - make_interval(secs => {stale} * cadence_s))),
            count(*) filter (where cadence_s is not null and last_seen is not null
                               and (will or (last_seen < %(now)s - make_interval(secs => {stale} * cadence_s)
                                             and not coalesce(connected, false)))),
            count(*) filter (where last_seen is null or cadence_s is null),
            count(*)
        from j
        """
    ).format(fresh=sql.Literal(FRESH_CADENCES), stale=sql.Literal(STALE_CADENCES), live=sql.SQL(_LIVE))
    params = {"models": list(cadences), "cadences": list(cadences.values()), "now": now}
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns one row
    fresh, stale, offline, unknown, total = (int(v) for v in row)
    return {"fresh": fresh, "stale": stale, "offline": offline, "unknown": unknown, "total": total}


async def aggregate(
    conn: AsyncConnection[Any], *, level: str, metric: str, device_class: str, max_age_s: float
) -> list[dict[str, Any]]:
    """Per district or grid cell: mean of a metric's latest values, devices, open alerts.

    Args:
        conn: An open connection.
        level: ``"district"`` or ``"grid"`` (devices without a grid cell are
            left out at grid level).
        metric: Snapshot key, a model metric or a derived one.
        device_class: Only devices of this class, and their alerts.
        max_age_s: Older snapshots do not enter the mean.

    Returns:
        One dict per area with ``area``, ``devices``, ``reporting`` (devices
        with a value), ``mean``, ``min``, ``max`` and ``open_alerts``, sorted
        by area code.

    Raises:
        ValueError: On an unknown level.
    """
    if level not in ("district", "grid"):
        raise ValueError(f"level must be 'district' or 'grid', got {level!r}")
    column = sql.Identifier("d", level)
    query = sql.SQL(
        """
        with per_device as (
            select {column} as area, d.code,
                   case when rs.updated_at >= now() - make_interval(secs => %(max_age)s) then {latest} end as v
            from devices d left join rule_state rs on rs.device_code = d.code
            where {live} and d.device_class = %(cls)s and {column} is not null
        ), alerts_open as (
            select {column} as area, count(*) as n
            from alerts a join devices d on d.code = a.device_code
            where a.state <> 'resolved' and a.{not_fence} and d.device_class = %(cls)s and {column} is not null
            group by 1
        )
        select p.area, count(*), count(p.v), avg(p.v), min(p.v), max(p.v), coalesce(max(ao.n), 0)
        from per_device p left join alerts_open ao on ao.area = p.area
        group by p.area order by p.area
        """
    ).format(column=column, latest=sql.SQL(_LATEST), live=sql.SQL(_LIVE), not_fence=sql.SQL(_NOT_FENCE))
    rows = await (await conn.execute(query, {"metric": metric, "cls": device_class, "max_age": max_age_s})).fetchall()
    return [
        {
            "area": area,
            "devices": int(n),
            "reporting": int(reporting),
            "mean": None if mean is None else float(mean),
            "min": None if lo is None else float(lo),
            "max": None if hi is None else float(hi),
            "open_alerts": int(alerts),
        }
        for area, n, reporting, mean, lo, hi, alerts in rows
    ]


async def open_by_severity(conn: AsyncConnection[Any]) -> dict[int, int]:
    """Alerts not resolved, by numeric severity."""
    rows = await (
        await conn.execute(
            "select severity, count(*) from alerts where state <> 'resolved' and " + _NOT_FENCE + " group by 1", {}
        )
    ).fetchall()
    return {int(s): int(n) for s, n in rows}


async def noise_exceedances_since(conn: AsyncConnection[Any], since: datetime) -> int:
    """Noise alerts (rules ``noise.*``) opened at or after ``since``, whatever their state now."""
    row = await (
        await conn.execute("select count(*) from alerts where rule like 'noise.%%' and opened_at >= %s", (since,))
    ).fetchone()
    return int(row[0]) if row else 0


async def manhole_open_alerts(conn: AsyncConnection[Any]) -> int:
    """Manhole alerts not resolved (by the alert's class, or its ``manhole.*`` rule when the class is unset)."""
    row = await (
        await conn.execute(
            "select count(*) from alerts where state <> 'resolved' and "
            + _NOT_FENCE
            + " and (device_class = 'manhole' or (device_class is null and rule like 'manhole.%%'))",
            {},
        )
    ).fetchone()
    return int(row[0]) if row else 0


async def readings_last_minute(conn: AsyncConnection[Any], *, now: datetime) -> int:
    """Devices heard from in the 60 s before ``now``: a cheap proxy for the ingest rate.

    ``device_liveness`` keeps one row per device, so this counts devices, not
    messages; a device reporting every 10 s counts once. The exact rate is
    the gateway's ``…_messages_total`` counter in Prometheus.
    """
    row = await (
        await conn.execute("select count(*) from device_liveness where last_seen >= %s - interval '60 seconds'", (now,))
    ).fetchone()
    return int(row[0]) if row else 0
