"""Pollution sources: permit status, today's load against the daily cap, open exceedances.

``GET /api/v1/sources`` (``readings:read``) lists the wastewater and flue-gas sources the
caller may see (district and class grants), optionally of one district, each with its
discharge permit (``none``, ``valid`` or ``expired`` today), per capped pollutant today's
load and the cap, and the source's open permit alerts; plus one summary row per district
(the console's "sources" view). Today's loads are the running sums the rule engine keeps
(``alerts.indicators.source``), so they count valid hours only.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from alerts.indicators.source import period_bounds
from citybrain.routes.context import ApiContext
from citybrain.security.auth import require
from citybrain.security.identities import Principal
from citybrain.security.scope import Scope
from devices.permits import PERMIT_JOIN_SQL, PERMIT_JSON_SQL
from geo import stats

__all__ = ["SOURCE_CLASSES", "build"]

#: Device classes of pollution sources (the models with permits: devices/data/models).
SOURCE_CLASSES = ("wastewater", "fluegas")
_CST = timezone(timedelta(hours=8))
_Reader = Annotated[Principal, Depends(require("readings:read"))]

_SOURCES_SQL = (
    "select d.code, d.name, d.district, d.device_class, d.lon, d.lat, "
    + PERMIT_JSON_SQL
    + ", r.snapshot from devices d "
    + PERMIT_JOIN_SQL
    + " left join rule_state r on r.device_code = d.code"
    " where d.device_class = any(%(classes)s) and (%(district)s::text is null or d.district = %(district)s)"
    " and d.state <> 'decommissioned' order by d.district, d.code"
)
# Open alerts that colour a source on the map: shelved ones do not (stats.counted_alert_sql).
_OPEN_SQL = (
    "select id, device_code, rule, severity, opened_at, message from alerts"
    " where device_code = any(%(codes)s) and " + stats.counted_alert_sql() + " order by opened_at"
)


def _permit_status(permit: Any, today: date) -> str:
    if not isinstance(permit, dict):
        return "none"
    try:
        return "valid" if date.fromisoformat(str(permit.get("valid_to"))) >= today else "expired"
    except ValueError:
        return "valid"


def _loads(permit: Any, snapshot: Any, day: tuple[float, float]) -> list[dict[str, Any]]:
    if not isinstance(permit, dict) or not isinstance(permit.get("limits"), dict):
        return []
    out = []
    for metric, lim in sorted(permit["limits"].items()):
        cap = lim.get("day_kg") if isinstance(lim, dict) else None
        if cap is None:
            continue
        cell = (snapshot or {}).get(f"{metric}_load_day_kg")
        # A sum from an earlier day is not today's load.
        today = float(cell[0]) if cell and cell[1] is not None and day[0] <= float(cell[1]) < day[1] else 0.0
        out.append({"metric": metric, "today_kg": today, "day_cap_kg": cap, "ratio": today / cap if cap else None})
    return out


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/sources."""
    router = APIRouter()
    pool = ctx.pool

    @router.get("/api/v1/sources", tags=["sources"])
    async def sources(
        principal: _Reader,
        district: Annotated[str | None, Query(description="One district (GB/T 2260 code)")] = None,
    ) -> dict[str, Any]:
        """Sources with permit status, today's load against the daily cap and open permit alerts."""
        scope = Scope.of(principal)
        classes = [c for c in SOURCE_CLASSES if scope.allows_class(c)]
        now = ctx.clock()
        today = now.astimezone(_CST).date()
        day = period_bounds(now.timestamp())["day"]
        async with pool.connection() as conn:
            rows = await (await conn.execute(_SOURCES_SQL, {"classes": classes, "district": district})).fetchall()
            rows = [r for r in rows if scope.allows_district(r[2])]
            alerts = await (await conn.execute(_OPEN_SQL, {"codes": [r[0] for r in rows]})).fetchall() if rows else []
        open_by: dict[str, list[dict[str, Any]]] = {}
        for aid, code, rule, severity, opened_at, message in alerts:
            if rule.split(".", 1)[0] in SOURCE_CLASSES or rule == "device.offline":
                open_by.setdefault(code, []).append(
                    {"id": aid, "rule": rule, "severity": severity, "opened_at": _iso(opened_at), "message": message}
                )
        items = []
        summary: dict[str, dict[str, int]] = {}
        for code, name, dist, cls, lon, lat, attrs, snapshot in rows:
            permit = (attrs or {}).get("permit")
            loads = _loads(permit, snapshot, day)
            status = _permit_status(permit, today)
            items.append(
                {
                    "code": code,
                    "name": name,
                    "district": dist,
                    "class": cls,
                    "lon": lon,
                    "lat": lat,
                    "permit": {"number": permit.get("number"), "holder": permit.get("holder"), "status": status}
                    if isinstance(permit, dict)
                    else None,
                    "loads_today": loads,
                    "open_alerts": open_by.get(code, []),
                }
            )
            row = summary.setdefault(dist, {"sources": 0, "with_permit": 0, "alerting": 0, "over_cap": 0})
            row["sources"] += 1
            row["with_permit"] += status == "valid"
            row["alerting"] += bool(open_by.get(code))
            row["over_cap"] += any((x["ratio"] or 0) >= 1 for x in loads)
        return {
            "date": today.isoformat(),
            "items": items,
            "districts": [{"district": d, **v} for d, v in sorted(summary.items())],
        }

    return router


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")
