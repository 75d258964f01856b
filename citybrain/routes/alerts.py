"""Alert routes: list and filter, get, ack, resolve, re-open, assign, comment;
district incidents; maintenance windows; and the live feed over Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator

from alerts.store import AlertNotFound, AlertStore, BadTransition
from citybrain.records import Severity
from citybrain.routes.context import ApiContext

__all__ = ["AssignIn", "CommentIn", "MaintenanceIn", "build"]

_SEVERITY = "^(info|warning|major|critical)$"
_STATE = "^(open|acknowledged|resolved|active)$"


class CommentIn(BaseModel):
    """A comment, optionally with an ack or resolve."""

    comment: str = Field(default="", max_length=2000)
    actor: str = Field(default="operator", max_length=100)


class AssignIn(CommentIn):
    """Assign an alert to a person or team."""

    assignee: str = Field(min_length=1, max_length=100)


class MaintenanceIn(BaseModel):
    """A maintenance window: alerts in its scope are suppressed while it lasts."""

    starts_at: datetime
    ends_at: datetime
    district: str | None = Field(default=None, pattern=r"^\d{6}$")
    device_code: str | None = Field(default=None, max_length=32)
    device_class: str | None = Field(default=None, max_length=20)
    reason: str = Field(default="", max_length=500)
    actor: str = Field(default="operator", max_length=100)

    @model_validator(mode="after")
    def _check(self) -> MaintenanceIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("times need a zone")
        return self


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/alerts, /api/v1/incidents and /api/v1/maintenance."""
    router = APIRouter()
    alerts = AlertStore(ctx.pool)

    @router.get("/api/v1/alerts", tags=["alerts"])
    async def list_alerts(
        state: Annotated[str | None, Query(pattern=_STATE, description="`active` = not resolved")] = None,
        severity: Annotated[str | None, Query(pattern=_SEVERITY, description="at least this severity")] = None,
        district: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
        device: str | None = None,
        device_class: Annotated[str | None, Query(alias="class", max_length=20)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Alerts, newest first."""
        items = await alerts.query(
            state=state,
            severity=severity,
            district=district,
            device=device,
            device_class=device_class,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
        return {"items": items, "limit": limit, "offset": offset}

    @router.get("/api/v1/alerts/stream", tags=["alerts"])
    async def stream(
        request: Request,
        severity: Annotated[str | None, Query(pattern=_SEVERITY)] = None,
        district: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
        device_class: Annotated[str | None, Query(alias="class", max_length=20)] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: every alert change (``event: alert``), heartbeats as comments."""
        feed = ctx.alert_feed
        if feed is None:
            raise HTTPException(503, "the live feed is not running in this process")
        floor = int(Severity.parse(severity)) if severity else 0

        def accept(ev: dict[str, Any]) -> bool:
            sev = ev.get("severity")
            if floor and (not isinstance(sev, str) or int(Severity.parse(sev)) < floor):
                return False
            if district and ev.get("district") != district:
                return False
            return not (device_class and ev.get("class", ev.get("device_class")) != device_class)

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 3000\n: connected\n\n"
            async for ev in feed.subscribe(accept):
                if await request.is_disconnected():
                    break
                if ev is None:
                    yield b": heartbeat\n\n"
                    continue
                data = json.dumps(ev, ensure_ascii=False, separators=(",", ":"))
                yield f"event: alert\nid: {ev.get('id', '')}\ndata: {data}\n\n".encode()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/api/v1/alerts/{alert_id}", tags=["alerts"])
    async def get_alert(alert_id: str) -> dict[str, Any]:
        """One alert with its history."""
        try:
            return await alerts.get(alert_id)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None

    async def _transition(alert_id: str, action: str, body: CommentIn, assignee: str | None = None) -> dict[str, Any]:
        try:
            return await alerts.transition(alert_id, action, body.actor, body.comment, assignee)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None
        except BadTransition as exc:
            raise HTTPException(409, str(exc)) from exc

    @router.post("/api/v1/alerts/{alert_id}/ack", tags=["alerts"])
    async def ack(alert_id: str, body: CommentIn) -> dict[str, Any]:
        """open → acknowledged."""
        return await _transition(alert_id, "ack", body)

    @router.post("/api/v1/alerts/{alert_id}/resolve", tags=["alerts"])
    async def resolve(alert_id: str, body: CommentIn) -> dict[str, Any]:
        """open | acknowledged → resolved."""
        return await _transition(alert_id, "resolve", body)

    @router.post("/api/v1/alerts/{alert_id}/reopen", tags=["alerts"])
    async def reopen(alert_id: str, body: CommentIn) -> dict[str, Any]:
        """resolved → open (counted in ``reopened``)."""
        return await _transition(alert_id, "reopen", body)

    @router.post("/api/v1/alerts/{alert_id}/assign", tags=["alerts"])
    async def assign(alert_id: str, body: AssignIn) -> dict[str, Any]:
        """Set the assignee."""
        return await _transition(alert_id, "assign", body, body.assignee)

    @router.post("/api/v1/alerts/{alert_id}/comment", tags=["alerts"])
    async def comment(alert_id: str, body: CommentIn) -> dict[str, Any]:
        """Add a comment; the state does not change."""
        return await _transition(alert_id, "comment", body)

    @router.get("/api/v1/incidents", tags=["alerts"])
    async def incidents(
        state: Annotated[str | None, Query(pattern=_STATE)] = None,
        district: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
    ) -> dict[str, Any]:
        """District incidents grouping many devices' alerts of one rule."""
        return {"items": await alerts.incidents(state=state, district=district)}

    @router.post("/api/v1/maintenance", tags=["alerts"], status_code=201)
    async def add_maintenance(body: MaintenanceIn) -> dict[str, Any]:
        """Suppress alerts for a district, a device or a class for a while."""
        async with ctx.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "insert into maintenance_windows (district, device_code, device_class, starts_at, ends_at,"
                    " reason, created_by) values (%s,%s,%s,%s,%s,%s,%s) returning id",
                    (
                        body.district,
                        body.device_code,
                        body.device_class,
                        body.starts_at,
                        body.ends_at,
                        body.reason,
                        body.actor,
                    ),
                )
            ).fetchone()
        assert row is not None
        return {"id": row[0], **body.model_dump()}

    @router.get("/api/v1/maintenance", tags=["alerts"])
    async def list_maintenance(active: bool = True) -> dict[str, Any]:
        """Maintenance windows (by default only those not yet over)."""
        query = "select * from maintenance_windows" + (" where ends_at > now()" if active else "")
        async with ctx.pool.connection() as conn:
            cur = conn.cursor()
            await cur.execute(query + " order by starts_at desc limit 500")
            cols = [d.name for d in cur.description or []]
            rows = await cur.fetchall()
        return {"items": [dict(zip(cols, r, strict=True)) for r in rows]}

    return router
