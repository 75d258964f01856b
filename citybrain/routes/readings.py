"""Readings routes: latest by event time, ranges, buckets, pages and streamed exports.

The SQL lives in :mod:`streams.queries`; these handlers validate, pick the
query and shape JSON. A :class:`streams.errors.QueryError` becomes a 422.

Every route needs ``readings:read`` and stays within the caller's district and
class grants (a device outside them answers 404). Metrics graded ``internal``
or ``sensitive`` (``grade:`` in the model files) are left out for callers
without ``internal:read`` / ``sensitive:read``; asking for one by name is 403.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from psycopg import sql
from psycopg.rows import dict_row

from citybrain.routes.context import ApiContext
from citybrain.routes.devices import device_class_of
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from citybrain.security.scope import Masker, Scope, can_read
from core.tables import class_table
from streams import queries
from streams.errors import QueryError
from streams.store import EXTRA_TABLE

__all__ = ["build"]

_QUALITY = ("good", "suspect", "bad")


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def _quality(flag: str | None) -> str:
    return (flag or "good").split(":")[0]


def _row_json(row: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    flags = row.get("flags") or {}
    return {
        "device": row["device_code"],
        "ts": _iso(row["ts"]),
        "rx": _iso(row["rx"]),
        "quality": _QUALITY[row["quality"]] if 0 <= row["quality"] < 3 else str(row["quality"]),
        "metrics": {m: row[m] for m in metrics if row.get(m) is not None},
        **({"flags": flags} if flags else {}),
    }


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
_Reader = Annotated[Principal, Depends(require("readings:read"))]


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/readings and /api/v1/devices/{code}/latest."""
    router = APIRouter()
    models = ctx.models
    pool = ctx.pool
    catalogs = queries.CatalogCache(models)

    def unprocessable(exc: QueryError) -> HTTPException:
        return HTTPException(422, str(exc))

    async def source(device_class: str, metric: str) -> queries.MetricSource:
        try:
            return (await catalogs.get(pool)).source(device_class, metric)
        except QueryError as exc:
            raise unprocessable(exc) from exc

    masker = Masker(models)

    def check_class(device_class: str) -> None:
        if device_class not in models.device_classes():
            raise HTTPException(422, f"unknown device class {device_class!r}; one of {models.device_classes()}")

    def readable_class_metrics(principal: Principal, device_class: str, metrics: list[str]) -> list[str]:
        return [m for m in metrics if can_read(principal, masker.class_metric_grade(device_class, m))]

    async def check_metric(request: Request, principal: Principal, model_key: str, device: str, metric: str) -> None:
        # Asking for a graded metric by name: 403 without the grant, audited with it.
        grade = masker.metric_grade(model_key, metric)
        if not can_read(principal, grade):
            raise HTTPException(403, f"metric {metric} is graded {grade}")
        if grade == "sensitive":
            await record(request, principal, "sensitive.read", f"device/{device}", {"metric": metric})

    async def scoped_rows(
        principal: Principal, class_: str, district: str | None
    ) -> tuple[str | None, set[str] | None, bool]:
        """(district to query, device codes to keep or None for all, nothing visible)."""
        scope = Scope.of(principal)
        classes = scope.classes_for(class_)
        districts = scope.districts_for(district)
        if classes == [] or districts == []:
            return None, None, True
        if districts is None or len(districts) == 1:
            return (districts[0] if districts else None), None, False
        # Several granted districts: the queries take one, so rows are kept by device code.
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "select code from devices where device_class = %s and district = any(%s)", (class_, districts)
                )
            ).fetchall()
        return None, {r[0] for r in rows}, False

    @router.get("/api/v1/devices/{code}/latest", tags=["readings"])
    async def latest(code: str, request: Request, principal: _Reader) -> dict[str, Any]:
        """The latest value of each metric the caller may read, by event time (not receive time)."""
        device_class, model_key = await device_class_of(ctx, code, principal)
        model = models.get(model_key)
        catalog = await catalogs.get(pool)
        wide = [c for c in models.metrics_of_class(device_class) if c in catalog.wide.get(device_class, ())]
        # One query: for each metric, the value at the greatest event time where it is set.
        # A reading beyond the clock-skew limit (stored, flagged suspect) is never the
        # latest: one device clock a year ahead must not hide every correct reading after it.
        skew = {"now": ctx.clock(), "skew": ctx.max_future_skew}
        parts = [
            sql.SQL(
                "(select array[extract(epoch from ts)::float8, {c}] from {t} where device_code = %(d)s"
                " and {c} is not null and {skewed} order by ts desc limit 1) as {c}"
            ).format(
                c=sql.Identifier(c), t=sql.Identifier(class_table(device_class)), skewed=sql.SQL(queries.SKEW_FILTER)
            )
            for c in wide
        ]
        async with pool.connection() as conn:
            row: dict[str, Any] | None = None
            if parts:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(sql.SQL("select {}").format(sql.SQL(", ").join(parts)), {"d": code} | skew)
                row = await cur.fetchone()
            # Metrics without a wide column yet live in the narrow table.
            narrow = await (
                await conn.execute(
                    sql.SQL(
                        "select distinct on (metric) metric, extract(epoch from ts)::float8, value from {}"
                        " where device_code = %(d)s and {} order by metric, ts desc"
                    ).format(sql.Identifier(EXTRA_TABLE), sql.SQL(queries.SKEW_FILTER)),
                    {"d": code} | skew,
                )
            ).fetchall()
        found: dict[str, tuple[float, float]] = {}
        for c in wide:
            val = (row or {}).get(c)
            if val is not None:
                found[c] = (val[0], val[1])
        for metric, ts, value in narrow:
            if metric not in found or ts > found[metric][0]:
                found[metric] = (ts, value)
        metrics: dict[str, Any] = {}
        revealed: list[str] = []
        for c, (ts, value) in found.items():
            grade = masker.metric_grade(model_key, c)
            if not can_read(principal, grade):
                continue
            if grade == "sensitive":
                revealed.append(c)
            unit = model.metrics[c].unit if c in model.metrics else None
            metrics[c] = {"value": value, "unit": unit, "ts": _iso(datetime.fromtimestamp(ts, UTC))}
        if not metrics:
            raise HTTPException(404, f"no readings yet for {code}")
        if revealed:
            await record(request, principal, "sensitive.read", f"device/{code}", {"metrics": sorted(revealed)})
        return {"device": code, "class": device_class, "metrics": metrics}

    @router.get("/api/v1/readings", tags=["readings"])
    async def readings(
        request: Request,
        principal: _Reader,
        device: Annotated[str, Query(description="Device code")],
        metric: Annotated[str, Query(description="Metric name")],
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: Annotated[datetime | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        after: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    ) -> dict[str, Any]:
        """Readings of one metric of one device in [from, to), by event time, a page at a time."""
        device_class, model_key = await device_class_of(ctx, device, principal)
        src = await source(device_class, metric)
        await check_metric(request, principal, model_key, device, metric)
        lo = from_ or datetime(1970, 1, 1, tzinfo=UTC)
        hi = to or datetime(9999, 1, 1, tzinfo=UTC)
        try:
            queries.check_range(lo, hi)
            cursor = queries.decode_cursor(after) if after else None
        except QueryError as exc:
            raise unprocessable(exc) from exc
        params: dict[str, Any] = {"d": device, "lo": lo, "hi": hi, "limit": limit}
        if cursor is not None:
            params["after"] = cursor.ts
        async with pool.connection() as conn:
            rows = await (await conn.execute(queries.points_sql(src, after=cursor is not None), params)).fetchall()
        nxt = queries.encode_cursor(queries.Cursor(rows[-1][0], device)) if len(rows) == limit else None
        return {
            "device": device,
            "metric": metric,
            "items": [{"ts": _iso(r[0]), "rx": _iso(r[1]), "value": r[2], "quality": _quality(r[3])} for r in rows],
            "next": nxt,
        }

    @router.get("/api/v1/readings/buckets", tags=["readings"])
    async def buckets(
        request: Request,
        principal: _Reader,
        device: Annotated[str, Query(description="Device code")],
        metric: Annotated[str, Query(description="Metric name")],
        from_: Annotated[datetime, Query(alias="from")],
        to: Annotated[datetime, Query()],
        bucket: Annotated[str, Query(description="Bucket width: 30s, 5m, 1h, 1d …")] = "1h",
        source_: Annotated[
            Literal["auto", "raw", "rollup"], Query(alias="source", description="Force raw rows or rollups")
        ] = "auto",
    ) -> dict[str, Any]:
        """avg/min/max/count of one device's metric per bucket (bad values excluded).

        Answered from the coarsest rollup (5 min, 1 h, 1 day) whose width divides
        the bucket when the range is aligned to it, else from the raw rows.
        """
        device_class, model_key = await device_class_of(ctx, device, principal)
        src = await source(device_class, metric)
        await check_metric(request, principal, model_key, device, metric)
        try:
            plan = queries.plan_buckets(src, from_, to, queries.parse_bucket(bucket), source=source_)
        except QueryError as exc:
            raise unprocessable(exc) from exc
        async with pool.connection() as conn:
            items = await queries.fetch_buckets(conn, src, plan, device, from_, to)
        model = models.get(model_key)
        return {
            "device": device,
            "metric": metric,
            "unit": model.metrics[metric].unit if metric in model.metrics else None,
            "bucket_seconds": int(plan.width.total_seconds()),
            "source": f"rollup_{plan.rollup.name}" if plan.rollup else "raw",
            "items": [{"ts": _iso(b.start), "avg": b.avg, "min": b.min, "max": b.max, "count": b.count} for b in items],
        }

    @router.get("/api/v1/readings/latest", tags=["readings"])
    async def latest_many(
        principal: _Reader,
        class_: Annotated[str, Query(alias="class", description="Device class")],
        district: Annotated[str | None, Query(description="GB/T 2260 district code")] = None,
        within_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60, description="Look back at most")] = 24 * 60,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        after: Annotated[str | None, Query(description="`next` of the previous page (a device code)")] = None,
    ) -> dict[str, Any]:
        """The latest row of every device of a class (optionally one district) within the caller's grants."""
        check_class(class_)
        district, keep, nothing = await scoped_rows(principal, class_, district)
        if nothing:
            return {"class": class_, "district": district, "items": [], "next": None}
        catalog = await catalogs.get(pool)
        metrics = [m for m in models.metrics_of_class(class_) if m in catalog.wide.get(class_, ())]
        query = queries.latest_sql(class_, metrics, district=district is not None, after=after is not None)
        metrics = readable_class_metrics(principal, class_, metrics)
        params = {
            "cls": class_,
            "since": ctx.clock() - timedelta(minutes=within_minutes),
            "now": ctx.clock(),
            "skew": ctx.max_future_skew,
            "limit": limit,
            "district": district,
            "after": after,
        }
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            rows = await cur.fetchall()
        items = []
        for r in rows:
            if keep is not None and r["code"] not in keep:
                continue
            r["device_code"] = r["code"]
            items.append(_row_json(r, metrics) | {"district": r["district"]})
        return {
            "class": class_,
            "district": district,
            "items": items,
            "next": rows[-1]["code"] if len(rows) == limit else None,
        }

    def _rows_params(
        class_: str, lo: datetime, hi: datetime, device: str | None, district: str | None
    ) -> dict[str, Any]:
        check_class(class_)
        try:
            queries.check_range(lo, hi)
        except QueryError as exc:
            raise unprocessable(exc) from exc
        return {"lo": lo, "hi": hi, "d": device, "district": district}

    @router.get("/api/v1/readings/rows", tags=["readings"])
    async def rows_page(
        principal: _Reader,
        class_: Annotated[str, Query(alias="class", description="Device class")],
        from_: Annotated[datetime, Query(alias="from")],
        to: Annotated[datetime, Query()],
        device: Annotated[str | None, Query()] = None,
        district: Annotated[str | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        after: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    ) -> dict[str, Any]:
        """Raw rows of a class in [from, to) within the caller's grants, by (event time, device), keyset-paginated."""
        params = _rows_params(class_, from_, to, device, district)
        if device is not None:
            await device_class_of(ctx, device, principal)
        district, keep, nothing = await scoped_rows(principal, class_, district)
        if nothing:
            return {"class": class_, "items": [], "next": None}
        params["district"] = district
        try:
            cursor = queries.decode_cursor(after) if after else None
        except QueryError as exc:
            raise unprocessable(exc) from exc
        metrics = [m for m in models.metrics_of_class(class_) if m in (await catalogs.get(pool)).wide.get(class_, ())]
        params["limit"] = limit
        if cursor is not None:
            params["after_ts"], params["after_d"] = cursor.ts, cursor.device
        query = queries.export_sql(
            class_,
            metrics,
            device=device is not None,
            district=district is not None,
            after=cursor is not None,
            limit=True,
        )
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            rows = await cur.fetchall()
        nxt = (
            queries.encode_cursor(queries.Cursor(rows[-1]["ts"], rows[-1]["device_code"]))
            if len(rows) == limit
            else None
        )
        shown = readable_class_metrics(principal, class_, metrics)
        return {
            "class": class_,
            "items": [_row_json(r, shown) for r in rows if keep is None or r["device_code"] in keep],
            "next": nxt,
        }

    @router.get("/api/v1/readings/export", tags=["readings"])
    async def export(
        request: Request,
        principal: _Reader,
        class_: Annotated[str, Query(alias="class", description="Device class")],
        from_: Annotated[datetime, Query(alias="from")],
        to: Annotated[datetime, Query()],
        device: Annotated[str | None, Query()] = None,
        district: Annotated[str | None, Query()] = None,
        format_: Annotated[Literal["ndjson", "csv"], Query(alias="format")] = "ndjson",
    ) -> StreamingResponse:
        """Every raw row of a class in [from, to) within the caller's grants, streamed as NDJSON or CSV."""
        params = _rows_params(class_, from_, to, device, district)
        if device is not None:
            await device_class_of(ctx, device, principal)
        district, keep, nothing = await scoped_rows(principal, class_, district)
        params["district"] = district
        all_metrics = [
            m for m in models.metrics_of_class(class_) if m in (await catalogs.get(pool)).wide.get(class_, ())
        ]
        metrics = readable_class_metrics(principal, class_, all_metrics)
        await record(
            request,
            principal,
            "reading.export",
            f"readings/{class_}",
            {"from": from_.isoformat(), "to": to.isoformat(), "device": device, "district": district},
        )

        async def body() -> AsyncIterator[bytes]:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            if format_ == "csv":
                writer.writerow(["device", "ts", "rx", "quality", *metrics, "flags"])
            if nothing:  # outside the caller's grants: an empty export, not an error
                yield buf.getvalue().encode()
                return
            n = 0
            async with pool.connection() as conn:
                async for row in queries.export_rows(
                    conn, class_, all_metrics, params, device=device is not None, district=district is not None
                ):
                    if keep is not None and row["device_code"] not in keep:
                        continue
                    if format_ == "csv":
                        flags = row.get("flags")
                        writer.writerow(
                            [
                                row["device_code"],
                                _iso(row["ts"]),
                                _iso(row["rx"]),
                                _QUALITY[row["quality"]],
                                *["" if row[m] is None else repr(row[m]) for m in metrics],
                                json.dumps(flags, separators=(",", ":")) if flags else "",
                            ]
                        )
                    else:
                        buf.write(json.dumps(_row_json(row, metrics), separators=(",", ":")) + "\n")
                    n += 1
                    if n % 1000 == 0:
                        yield buf.getvalue().encode()
                        buf.seek(0)
                        buf.truncate()
            if buf.tell():
                yield buf.getvalue().encode()

        media = "text/csv; charset=utf-8" if format_ == "csv" else "application/x-ndjson"
        filename = f"readings_{class_}_{from_:%Y%m%dT%H%M%S}.{format_}"
        return StreamingResponse(
            body(), media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    return router
