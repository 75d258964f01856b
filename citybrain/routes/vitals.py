"""The city vitals board: one call with the headline figures of every domain.

``GET /api/v1/vitals`` is polled by every console screen, so its answer is
computed at most once per ``ttl_s`` (5 s) per API process and shared.
It needs ``readings:read``; the figures are city-wide aggregates (counts,
AQI per district, shares), the same for every caller, with no device,
reading or alert of their own in them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends

from citybrain.airquality import area_aqi_report
from citybrain.routes.context import ApiContext
from citybrain.routes.geo import DEFAULT_MAX_AGE_S, model_cadences
from citybrain.security.auth import require
from citybrain.security.identities import Principal
from core.records import Severity
from core.tables import class_table
from devices.code import XIAMEN_DISTRICTS
from geo import stats

__all__ = ["build", "local_midnight"]

CITY_ZONE = ZoneInfo("Asia/Shanghai")


def local_midnight(now: datetime, zone: ZoneInfo = CITY_ZONE) -> datetime:
    """The start of ``now``'s calendar day in ``zone`` (aware)."""
    local = now.astimezone(zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def build(ctx: ApiContext, *, zone: ZoneInfo = CITY_ZONE, ttl_s: float = 5.0) -> APIRouter:
    """Route /api/v1/vitals.

    Args:
        ctx: Shared dependencies.
        zone: The city's time zone, for "today".
        ttl_s: How long one answer is reused.
    """
    router = APIRouter()
    pool = ctx.pool
    cadences = model_cadences(ctx.models)
    tables = [class_table(c) for c in ctx.models.device_classes()]
    cache: dict[str, tuple[float, dict[str, Any]]] = {}
    lock = asyncio.Lock()

    async def compute() -> dict[str, Any]:
        now = ctx.clock().astimezone(zone)
        async with pool.connection() as conn:
            figures = await stats.district_figures(conn, max_age_s=DEFAULT_MAX_AGE_S)
            report = await area_aqi_report(conn, ctx.models, max_age_s=DEFAULT_MAX_AGE_S)
            counts = await stats.device_counts(conn, cadences, now=now)
            severities = await stats.open_by_severity(conn)
            noise = await stats.noise_exceedances_since(conn, local_midnight(now, zone))
            manhole = await stats.manhole_open_alerts(conn)
            ingest = await stats.messages_last_minute(conn, tables, now=now)
        city = report.city.to_json()
        stations = sum(f.water_stations for f in figures.values())
        ok = sum((f.water_ok_share or 0.0) * f.water_stations for f in figures.values())
        return {
            "generated_at": now.isoformat(),
            # HJ 633 area AQI from the assessment stations' mean concentrations
            # (citybrain.airquality, docs/standards.md §3.6): the same numbers as the map.
            "aqi": {
                "city": city["aqi"],
                "level": city["aqi_level"],
                "colour": city["aqi_colour"],
                "primary_pollutants": city["primary_pollutants"],
                "stations": city["stations"],
                "as_of": report.as_of.isoformat(),
                "districts": {code: report.area(code).aqi for code in XIAMEN_DISTRICTS},
            },
            "water": {"ok_share": ok / stations if stations else None, "stations": stations},
            "noise": {"exceedances_today": noise, "since": local_midnight(now, zone).isoformat()},
            "manhole": {"open_alerts": manhole},
            "devices": {
                "online": counts["fresh"],
                "stale": counts["stale"],
                "offline": counts["offline"],
                "unknown": counts["unknown"],
                "total": counts["total"],
            },
            "ingest": {"messages_last_minute": ingest},
            "alerts": {"open_by_severity": {s.label: severities.get(int(s), 0) for s in Severity}},
        }

    @router.get("/api/v1/vitals", tags=["vitals"])
    async def vitals(_: Annotated[Principal, Depends(require("readings:read"))]) -> dict[str, Any]:
        """Headline figures: AQI, water compliance, noise, manholes, device liveness, ingest, open alerts.

        ``aqi`` is the HJ 633 area AQI of the city and of each district, from
        the mean concentrations of their assessment stations (micro-stations
        never count), the same numbers as ``/api/v1/geo/districts`` and
        ``/api/v1/geo/aqi``. ``ingest.messages_last_minute`` counts messages
        stored with a receive time in the last 60 s (one row of a
        ``readings_{class}`` table per device message); ``devices.online`` are devices seen within 2× their
        model's cadence, ``stale`` within 10× or connected (MQTT session up)
        but silent, ``offline`` beyond that or at once after their last will
        (see :func:`geo.status.classify`).
        """
        hit = cache.get("v")
        if hit is not None and time.monotonic() - hit[0] < ttl_s:
            return hit[1]
        async with lock:  # one computation at a time; concurrent pollers share it
            hit = cache.get("v")
            if hit is not None and time.monotonic() - hit[0] < ttl_s:
                return hit[1]
            result = await compute()
            cache["v"] = (time.monotonic(), result)
            return result

    return router
