"""The HTTP API (FastAPI). OpenAPI is served at /docs and /openapi.json.

Built by :func:`create_api` from typed arguments; the database pool opens in
the app's lifespan, never at import.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from alerts.store import AlertNotFound, AlertStore, BadTransition
from citybrain.migrations import class_table
from devices.code import parse as parse_code
from devices.errors import DeviceCodeError, LedgerError, UnknownDeviceError
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry

__all__ = ["create_api"]

log = logging.getLogger(__name__)


class DeviceIn(BaseModel):
    """A device to register."""

    code: str = Field(description="17-character city device code (with check character)")
    model: str = Field(description="Model id (latest version) or id@version")
    name: str = ""
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    crs: str = Field(default="WGS84", pattern="^(WGS84|GCJ02)$")
    owner_unit: str | None = None
    installer: str | None = None
    contact: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class CommentIn(BaseModel):
    """A comment, optionally with an ack or resolve."""

    comment: str = Field(default="", max_length=2000)
    actor: str = Field(default="operator", max_length=100)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def create_api(database_url: str, models: ModelRegistry, registry: CollectorRegistry) -> FastAPI:
    """Build the API app."""
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False)
    requests = Counter(
        "citybrain_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="citybrain API",
        version="1",
        description="City IoT sensing hub: devices, readings, alerts.",
        lifespan=lifespan,
    )
    ledger = Ledger(pool, models)
    alerts = AlertStore(pool)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        requests.labels(request.method, path, str(response.status_code)).inc()
        return response

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        try:
            async with pool.connection(timeout=2) as conn:
                await conn.execute("select 1")
        except Exception as exc:
            raise HTTPException(503, f"database unavailable: {exc}") from exc
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/models", tags=["devices"])
    async def list_models() -> list[dict[str, Any]]:
        return [m.to_json() for m in models.all()]

    @app.post("/api/v1/devices", tags=["devices"], status_code=201)
    async def register_device(dev: DeviceIn) -> dict[str, Any]:
        try:
            info = await ledger.register(
                NewDevice(
                    code=dev.code,
                    model=dev.model,
                    name=dev.name,
                    lon=dev.lon,
                    lat=dev.lat,
                    crs=dev.crs,
                    owner_unit=dev.owner_unit,
                    installer=dev.installer,
                    contact=dev.contact,
                    attributes=dev.attributes,
                ),
                actor="api",
            )
        except (DeviceCodeError, LedgerError) as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"code": info.code, "model": info.model, "district": info.district, "state": info.state}

    @app.get("/api/v1/devices/{code}", tags=["devices"])
    async def get_device(code: str) -> dict[str, Any]:
        try:
            row = await ledger.get(code)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        if row.get("contact"):
            row["contact"] = "***"  # personal data: masked by default
        return row

    async def _device_class(code: str) -> tuple[str, str]:
        try:
            parse_code(code)
        except DeviceCodeError as exc:
            raise HTTPException(422, str(exc)) from exc
        async with pool.connection() as conn:
            row = await (
                await conn.execute("select device_class, model from devices where code = %s", (code,))
            ).fetchone()
        if row is None:
            raise HTTPException(404, f"no device {code}")
        return row[0], row[1]

    @app.get("/api/v1/devices/{code}/latest", tags=["readings"])
    async def latest(code: str) -> dict[str, Any]:
        """The latest value of each metric, by event time (not receive time)."""
        device_class, model_key = await _device_class(code)
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

    @app.get("/api/v1/readings", tags=["readings"])
    async def readings(
        device: Annotated[str, Query(description="Device code")],
        metric: Annotated[str, Query(description="Metric name")],
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: Annotated[datetime | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        """Readings of one metric of one device in [from, to), by event time."""
        device_class, _ = await _device_class(device)
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

    @app.get("/api/v1/alerts", tags=["alerts"])
    async def list_alerts(
        state: Annotated[str | None, Query(pattern="^(open|acknowledged|resolved)$")] = None,
        severity: Annotated[str | None, Query(pattern="^(info|warning|major|critical)$")] = None,
        district: str | None = None,
        device: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        items = await alerts.list(
            state=state, severity=severity, district=district, device=device, limit=limit, offset=offset
        )
        return {"items": items, "limit": limit, "offset": offset}

    @app.get("/api/v1/alerts/{alert_id}", tags=["alerts"])
    async def get_alert(alert_id: str) -> dict[str, Any]:
        try:
            return await alerts.get(alert_id)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None

    async def _transition(alert_id: str, action: str, body: CommentIn) -> dict[str, Any]:
        try:
            return await alerts.transition(alert_id, action, body.actor, body.comment)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None
        except BadTransition as exc:
            raise HTTPException(409, str(exc)) from exc

    @app.post("/api/v1/alerts/{alert_id}/ack", tags=["alerts"])
    async def ack(alert_id: str, body: CommentIn) -> dict[str, Any]:
        return await _transition(alert_id, "ack", body)

    @app.post("/api/v1/alerts/{alert_id}/resolve", tags=["alerts"])
    async def resolve(alert_id: str, body: CommentIn) -> dict[str, Any]:
        return await _transition(alert_id, "resolve", body)

    @app.post("/api/v1/alerts/{alert_id}/comment", tags=["alerts"])
    async def comment(alert_id: str, body: CommentIn) -> dict[str, Any]:
        return await _transition(alert_id, "comment", body)

    return app
