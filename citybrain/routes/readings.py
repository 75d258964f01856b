"""Readings routes: latest by event time, ranges."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from psycopg import sql
from psycopg.rows import dict_row

from citybrain.migrations import class_table
from citybrain.routes.context import ApiContext
from citybrain.routes.devices import device_class_of

__all__ = ["build"]


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/readings and /api/v1/devices/{code}/latest."""
    router = APIRouter()
    models = ctx.models
    pool = ctx.pool

    @router.get("/api/v1/devices/{code}/latest", tags=["readings"])
    async def latest(code: str) -> dict[str, Any]:
        """The latest value of each metric, by event time (not receive time)."""
        device_class, model_key = await device_class_of(ctx, code)
        model = models.get(model_key)
        cols = models.metrics_of_class(device_class)
        # One query: for each metric, the value at the greatest event time where it is set.
        parts = [
            sql.SQL(
                "(select array[extract(epoch from ts)::float8, {c}] from {t} where device_code = %(d)s"
                " and {c} is not null order by ts desc limit 1) as {c}"
            ).format(c=sql.Identifier(c), t=sql.Identifier(class_table(device_class)))
            for c in cols
        ]
        query = sql.SQL("select {}").format(sql.SQL(", ").join(parts))
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, {"d": code})
            row = await cur.fetchone()
        metrics: dict[str, Any] = {}
        for c in cols:
            val = (row or {}).get(c)
            if val is None:
                continue
            ts, value = val
            unit = model.metrics[c].unit if c in model.metrics else None
            metrics[c] = {"value": value, "unit": unit, "ts": _iso(datetime.fromtimestamp(ts, UTC))}
        if not metrics:
            raise HTTPException(404, f"no readings yet for {code}")
        return {"device": code, "class": device_class, "metrics": metrics}

    @router.get("/api/v1/readings", tags=["readings"])
    async def readings(
        device: Annotated[str, Query(description="Device code")],
        metric: Annotated[str, Query(description="Metric name")],
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: Annotated[datetime | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        """Readings of one metric of one device in [from, to), by event time."""
        device_class, _ = await device_class_of(ctx, device)
        if metric not in models.metrics_of_class(device_class):
            raise HTTPException(422, f"metric {metric!r} is not a metric of class {device_class}")
        query = sql.SQL(
            "select ts, rx, {m}, quality, flags->>{ml} from {t} where device_code = %s and {m} is not null"
            " and ts >= %s and ts < %s order by ts limit %s"
        ).format(m=sql.Identifier(metric), ml=sql.Literal(metric), t=sql.Identifier(class_table(device_class)))
        lo = from_ or datetime(1970, 1, 1, tzinfo=UTC)
        hi = to or datetime(9999, 1, 1, tzinfo=UTC)
        async with pool.connection() as conn:
            rows = await (await conn.execute(query, (device, lo, hi, limit))).fetchall()
        return {
            "device": device,
            "metric": metric,
            "items": [
                {"ts": _iso(r[0]), "rx": _iso(r[1]), "value": r[2], "quality": (r[4] or "good").split(":")[0]}
                for r in rows
            ],
        }

    return router
