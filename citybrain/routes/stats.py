"""Statistics routes: devices reporting and metric means per district and per class.

Both need ``readings:read``. Per-district figures are limited to the caller's
district and class grants; the per-class figures are city-wide aggregates
(counts and means, no device), limited to the granted classes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from citybrain.routes.context import ApiContext
from citybrain.security.auth import require
from citybrain.security.identities import Principal
from citybrain.security.scope import Masker, Scope, can_read
from streams import queries
from streams.errors import QueryError

__all__ = ["build"]


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
_Reader = Annotated[Principal, Depends(require("readings:read"))]


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/stats."""
    router = APIRouter()
    models = ctx.models
    pool = ctx.pool
    catalogs = queries.CatalogCache(models)
    masker = Masker(models)

    def check_metric(principal: Principal, device_class: str, metric: str | None) -> None:
        if metric and not can_read(principal, grade := masker.class_metric_grade(device_class, metric)):
            raise HTTPException(403, f"metric {metric} is graded {grade}")

    @router.get("/api/v1/stats/districts", tags=["stats"])
    async def by_district(
        principal: _Reader,
        class_: Annotated[str, Query(alias="class", description="Device class")],
        metric: Annotated[str | None, Query(description="Metric to average (optional)")] = None,
        minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60, description="Window, back from now")] = 15,
    ) -> dict[str, Any]:
        """Per district: devices, devices reporting in the last N minutes, mean of a metric.

        "Reporting" is by receive time; the mean is over good and suspect values
        whose event time is in the window.
        """
        if class_ not in models.device_classes():
            raise HTTPException(422, f"unknown device class {class_!r}; one of {models.device_classes()}")
        try:
            src = (await catalogs.get(pool)).source(class_, metric) if metric else None
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from exc
        check_metric(principal, class_, metric)
        scope = Scope.of(principal)
        since = ctx.clock() - timedelta(minutes=minutes)
        rows = []
        if scope.allows_class(class_):
            async with pool.connection() as conn:
                rows = await (
                    await conn.execute(queries.district_stats_sql(src), {"cls": class_, "since": since})
                ).fetchall()
            rows = [r for r in rows if scope.allows_district(r[0])]
        return {
            "class": class_,
            "metric": metric,
            "minutes": minutes,
            "items": [
                {"district": r[0], "devices": r[1], "reporting": r[2], "mean": r[3], "values": r[4]} for r in rows
            ],
        }

    @router.get("/api/v1/stats/classes", tags=["stats"])
    async def by_class(
        principal: _Reader,
        metric: Annotated[str | None, Query(description="Metric to average where the class has it")] = None,
        minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60, description="Window, back from now")] = 15,
    ) -> dict[str, Any]:
        """Per class: devices, devices reporting in the last N minutes, mean of a metric."""
        catalog = await catalogs.get(pool)
        sources = []
        if metric:
            sources = [
                catalog.source(c, metric) for c in models.device_classes() if metric in models.metrics_of_class(c)
            ]
            if not sources:
                raise HTTPException(422, f"metric {metric!r} is not a metric of any class")
        for c in models.device_classes():
            if metric and metric in models.metrics_of_class(c):
                check_metric(principal, c, metric)
        since = ctx.clock() - timedelta(minutes=minutes)
        async with pool.connection() as conn:
            rows = await (await conn.execute(queries.class_stats_sql(sources), {"since": since})).fetchall()
        scope = Scope.of(principal)
        rows = [r for r in rows if scope.allows_class(r[0])]
        return {
            "metric": metric,
            "minutes": minutes,
            "items": [{"class": r[0], "devices": r[1], "reporting": r[2], "mean": r[3], "values": r[4]} for r in rows],
        }

    return router
