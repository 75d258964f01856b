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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from geo.status import FRESH_CADENCES, STALE_CADENCES

__all__ = [
    "AIR_POLLUTANTS",
    "DERIVED_METRICS",
    "INGEST_EVENT_LOOKBACK_S",
    "AirStationValues",
    "DistrictFigures",
    "aggregate",
    "air_station_values",
    "counted_alert_sql",
    "device_counts",
    "district_figures",
    "manhole_open_alerts",
    "messages_last_minute",
    "noise_exceedances_since",
    "open_by_severity",
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
    "case when json_typeof(rs.snapshot -> %(metric)s -> 0) = 'number'"
    " then (rs.snapshot -> %(metric)s ->> 0)::float8 end"
)

_LIVE = "d.state <> 'decommissioned'"


def counted_alert_sql(alias: str = "") -> str:
    """SQL condition: an unresolved alert that counts in the city's state (tiles, map colours).

    Fence-presence alerts (alerts.geofence: "device is inside fence X", severity info) are
    events, not problems. A shelved alert (``shelved_until`` still ahead, on the database's
    clock: alerts.store) was silenced by an operator: it stays in the alert list, marked,
    but must not colour the map or count as open, or shelving would not quieten anything.
    Written for queries run with parameters (``%%`` is a literal ``%``).

    Args:
        alias: Table alias of ``alerts`` in the query (``"a"``), or empty.
    """
    a = f"{alias}." if alias else ""
    return (
        f"{a}state <> 'resolved' and {a}rule not like 'geofence.%%'"
        f" and ({a}shelved_until is null or {a}shelved_until <= now())"
    )


_COUNTED = counted_alert_sql()


@dataclass(frozen=True, slots=True)
class DistrictFigures:
    """What the district choropleth shows.

    Attributes:
        devices: Devices registered in the district (not decommissioned).
        open_alerts: Alerts in the district that count (:func:`counted_alert_sql`: not
            resolved, not a fence event, not shelved).
        water_ok_share: Share of its water stations (with a value) meeting
            their target class, or None.
        water_stations: Water stations with a value.
    """

    devices: int = 0
    open_alerts: int = 0
    water_ok_share: float | None = None
    water_stations: int = 0


async def district_figures(conn: AsyncConnection[Any], *, max_age_s: float) -> dict[str, DistrictFigures]:
    """Devices, open alerts and water compliance per district.

    The district AQI is not here: it is computed from the assessment stations'
    concentrations (:func:`air_station_values`, then
    ``alerts.indicators.aqi.area_aqi``), one rule for the map, the vitals and the API.

    Args:
        conn: An open connection.
        max_age_s: Snapshots not updated for longer are ignored for water,
            so a station that went silent a week ago cannot paint its district.

    Returns:
        Figures by district code; districts with nothing at all are absent.
    """
    out: dict[str, dict[str, Any]] = {}
    query = sql.SQL(
        """
        with devs as (
            select d.district, count(*) as n from devices d where {live} group by 1
        ), alerts_open as (
            select district, count(*) as n from alerts where {counted} group by 1
        ), latest as (
            select d.district, d.device_class,
                   case when json_typeof(rs.snapshot -> 'water_class_over_target' -> 0) = 'number'
                        then (rs.snapshot -> 'water_class_over_target' ->> 0)::float8 end as over
            from devices d join rule_state rs on rs.device_code = d.code
            where {live} and d.device_class = 'water'
              and rs.updated_at >= now() - make_interval(secs => %(max_age)s)
        ), env as (
            select district,
                   avg((over <= 0)::int::float8) filter (where over is not null) as ok,
                   count(over) as stations
            from latest group by 1
        )
        select coalesce(devs.district, alerts_open.district, env.district),
               coalesce(devs.n, 0), coalesce(alerts_open.n, 0), env.ok, coalesce(env.stations, 0)
        from devs
        full join alerts_open on alerts_open.district = devs.district
        full join env on env.district = coalesce(devs.district, alerts_open.district)
        """
    ).format(live=sql.SQL(_LIVE), counted=sql.SQL(_COUNTED))
    rows = await (await conn.execute(query, {"max_age": max_age_s})).fetchall()
    for district, devices, alerts, ok, stations in rows:
        out[district] = {
            "devices": int(devices),
            "open_alerts": int(alerts),
            "water_ok_share": None if ok is None else float(ok),
            "water_stations": int(stations),
        }
    return {code: DistrictFigures(**values) for code, values in out.items()}


# The pollutants of HJ 633 Table 1, as the air models name their metrics.
AIR_POLLUTANTS: tuple[str, ...] = ("so2", "no2", "pm10", "co", "o3", "pm25")


@dataclass(frozen=True, slots=True)
class AirStationValues:
    """The latest pollutant values of one air device (station or micro-station).

    Attributes:
        code: Device code.
        district: District code, or None.
        model: ``devices.model`` (``id@version``).
        attributes: The device's ledger attributes.
        values: Pollutant → latest value (canonical units: µg/m³, CO mg/m³);
            pollutants without a value are absent.
        updated_at: When the snapshot was last written.
    """

    code: str
    district: str | None
    model: str
    attributes: Mapping[str, Any]
    values: Mapping[str, float]
    updated_at: datetime


async def air_station_values(conn: AsyncConnection[Any], *, max_age_s: float) -> list[AirStationValues]:
    """Every live air device whose snapshot is fresher than ``max_age_s``, with its latest pollutant values.

    Which of them are assessment stations, and the area AQI, are decided
    above this layer (``devices.models.is_assessment_station``,
    ``alerts.indicators.aqi.area_aqi``); this only reads.
    """
    cols = sql.SQL(", ").join(
        sql.SQL(_LATEST.replace("%(metric)s", "{m}")).format(m=sql.Literal(p)) for p in AIR_POLLUTANTS
    )
    query = sql.SQL(
        """
        select d.code, d.district, d.model, d.attributes, rs.updated_at, {cols}
        from devices d join rule_state rs on rs.device_code = d.code
        where {live} and d.device_class = 'air'
          and rs.updated_at >= now() - make_interval(secs => %(max_age)s)
        order by d.code
        """
    ).format(cols=cols, live=sql.SQL(_LIVE))
    rows = await (await conn.execute(query, {"max_age": max_age_s})).fetchall()
    out = []
    for code, district, model, attributes, updated_at, *values in rows:
        out.append(
            AirStationValues(
                code=code,
                district=district,
                model=model,
                attributes=attributes or {},
                values={p: float(v) for p, v in zip(AIR_POLLUTANTS, values, strict=True) if v is not None},
                updated_at=updated_at,
            )
        )
    return out


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
            where {counted} and d.device_class = %(cls)s and {column} is not null
            group by 1
        )
        select p.area, count(*), count(p.v), avg(p.v), min(p.v), max(p.v), coalesce(max(ao.n), 0)
        from per_device p left join alerts_open ao on ao.area = p.area
        group by p.area order by p.area
        """
    ).format(column=column, latest=sql.SQL(_LATEST), live=sql.SQL(_LIVE), counted=sql.SQL(counted_alert_sql("a")))
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
    """Alerts that count (:func:`counted_alert_sql`: unresolved, not shelved), by numeric severity."""
    rows = await (
        await conn.execute("select severity, count(*) from alerts where " + _COUNTED + " group by 1", {})
    ).fetchall()
    return {int(s): int(n) for s, n in rows}


async def noise_exceedances_since(conn: AsyncConnection[Any], since: datetime) -> int:
    """Noise alerts (rules ``noise.*``) opened at or after ``since``, whatever their state now."""
    row = await (
        await conn.execute("select count(*) from alerts where rule like 'noise.%%' and opened_at >= %s", (since,))
    ).fetchone()
    return int(row[0]) if row else 0


async def manhole_open_alerts(conn: AsyncConnection[Any]) -> int:
    """Manhole alerts that count (:func:`counted_alert_sql`), by the alert's class or its ``manhole.*`` rule."""
    row = await (
        await conn.execute(
            "select count(*) from alerts where "
            + _COUNTED
            + " and (device_class = 'manhole' or (device_class is null and rule like 'manhole.%%'))",
            {},
        )
    ).fetchone()
    return int(row[0]) if row else 0


# Only rows whose event time is this recent are looked at: the class tables are
# partitioned and BRIN-indexed on the event time, not on the receive time, so this
# bound keeps the count to the last minutes' blocks. A backfilled message (event
# time older than this) is stored but not counted in the live rate.
INGEST_EVENT_LOOKBACK_S = 600


async def messages_last_minute(
    conn: AsyncConnection[Any], tables: Iterable[str], *, now: datetime, window_s: int = 60
) -> int:
    """Messages stored with a receive time in the ``window_s`` seconds before ``now``, over all class tables.

    A row of ``readings_{class}`` is one device's message at one event time (a
    message's metrics are one wide row), so this counts messages, not devices
    and not metric values. Messages whose event time is more than
    :data:`INGEST_EVENT_LOOKBACK_S` old (backfills) are not counted.

    Args:
        conn: An open connection.
        tables: The ``readings_{class}`` tables (``streams.store.class_table``).
        now: The API's clock: ``rx`` is an application-side receive time, so the
            window is measured from the application's clock, not the database's.
        window_s: The window, 60 for a per-minute rate.
    """
    names = list(tables)
    if not names:
        return 0
    # Only tables that exist (a class whose table was never created counts 0).
    found = await conn.execute("select t from unnest(%s::text[]) t where to_regclass(t) is not null", (names,))
    rows = await found.fetchall()
    existing = [r[0] for r in rows]
    if not existing:
        return 0
    parts = sql.SQL(" union all ").join(
        sql.SQL(
            "select count(*) as n from {} where ts >= %(now)s - make_interval(secs => %(lookback)s)"
            " and rx >= %(now)s - make_interval(secs => %(window)s)"
        ).format(sql.Identifier(t))
        for t in existing
    )
    query = sql.SQL("select coalesce(sum(n), 0) from ({}) c").format(parts)
    row = await (
        await conn.execute(query, {"now": now, "lookback": INGEST_EVENT_LOOKBACK_S, "window": window_s})
    ).fetchone()
    return int(row[0]) if row else 0
