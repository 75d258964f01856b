"""Alert routes: list, get, ack, resolve, comment."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from alerts.store import AlertNotFound, AlertStore, BadTransition
from citybrain.routes.context import ApiContext

__all__ = ["CommentIn", "build"]


class CommentIn(BaseModel):
    """A comment, optionally with an ack or resolve."""

    comment: str = Field(default="", max_length=2000)
    actor: str = Field(default="operator", max_length=100)


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/alerts."""
    router = APIRouter()
    alerts = AlertStore(ctx.pool)

    @router.get("/api/v1/alerts", tags=["alerts"])
    async def list_alerts(
        state: Annotated[str | None, Query(pattern="^(open|acknowledged|resolved)$")] = None,
        severity: Annotated[str | None, Query(pattern="^(info|warning|major|critical)$")] = None,
        district: str | None = None,
        device: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        items = await alerts.query(
            state=state, severity=severity, district=district, device=device, limit=limit, offset=offset
        )
        return {"items": items, "limit": limit, "offset": offset}

    @router.get("/api/v1/alerts/{alert_id}", tags=["alerts"])
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

    @router.post("/api/v1/alerts/{alert_id}/ack", tags=["alerts"])
    async def ack(alert_id: str, body: CommentIn) -> dict[str, Any]:
        return await _transition(alert_id, "ack", body)

    @router.post("/api/v1/alerts/{alert_id}/resolve", tags=["alerts"])
    async def resolve(alert_id: str, body: CommentIn) -> dict[str, Any]:
        return await _transition(alert_id, "resolve", body)

    @router.post("/api/v1/alerts/{alert_id}/comment", tags=["alerts"])
    async def comment(alert_id: str, body: CommentIn) -> dict[str, Any]:
        return await _transition(alert_id, "comment", body)

    return router
