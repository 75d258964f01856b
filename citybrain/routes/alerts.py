"""Alert routes: list and filter, get, ack, resolve, re-open, assign, comment;
district incidents; maintenance windows; and the live feed over Server-Sent Events.

Reads need ``alerts:read``, actions ``alerts:act``. Everything is limited to the
caller's district and class grants (an alert outside them answers 404; the SSE
feed drops its events). The actor of every action is the authenticated
principal; the ``actor`` field of older clients is accepted and ignored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator

from alerts.store import MAX_SHELVE_S, AlertNotFound, AlertStore, BadTransition
from alerts.texts import AlertTexts, MetricText, load_texts
from citybrain.routes.context import ApiContext
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from citybrain.security.scope import Scope
from core.records import Severity

__all__ = ["AssignIn", "CommentIn", "MaintenanceIn", "ShelveIn", "build"]

_SEVERITY = "^(info|warning|major|critical)$"
_STATE = "^(open|acknowledged|resolved|active)$"


class CommentIn(BaseModel):
    """A comment, optionally with an ack or resolve."""

    comment: str = Field(default="", max_length=2000)
    actor: str = Field(
        default="operator", max_length=100, description="Ignored: the actor is the authenticated principal"
    )


class AssignIn(CommentIn):
    """Assign an alert to a person or team."""

    assignee: str = Field(min_length=1, max_length=100)


class ShelveIn(BaseModel):
    """Shelve (silence) an alert until a time or for a duration, with a reason."""

    reason: str = Field(min_length=1, max_length=500, description="Why it is shelved (audited)")
    until: datetime | None = Field(default=None, description="Expiry, with a zone; or give duration_s")
    duration_s: int | None = Field(default=None, ge=60, le=MAX_SHELVE_S, description="Expiry from now, in seconds")
    actor: str = Field(
        default="operator", max_length=100, description="Ignored: the actor is the authenticated principal"
    )

    @model_validator(mode="after")
    def _check(self) -> ShelveIn:
        if (self.until is None) == (self.duration_s is None):
            raise ValueError("give exactly one of until and duration_s")
        if self.until is not None and (self.until.tzinfo is None or self.until.utcoffset() is None):
            raise ValueError("until needs a zone")
        if not self.reason.strip():
            raise ValueError("a reason is required")
        return self


class MaintenanceIn(BaseModel):
    """A maintenance window: alerts in its scope are suppressed while it lasts."""

    starts_at: datetime
    ends_at: datetime
    district: str | None = Field(default=None, pattern=r"^\d{6}$")
    device_code: str | None = Field(default=None, max_length=32)
    device_class: str | None = Field(default=None, max_length=20)
    reason: str = Field(default="", max_length=500)
    actor: str = Field(
        default="operator", max_length=100, description="Ignored: the creator is the authenticated principal"
    )

    @model_validator(mode="after")
    def _check(self) -> MaintenanceIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("times need a zone")
        return self


# Module level: with postponed annotations FastAPI resolves these names in the module's globals.
_Act = Annotated[Principal, Depends(require("alerts:act"))]


def _district_names() -> dict[str, dict[str, str]]:
    doc = json.loads(resources.files("geo").joinpath("data/xiamen_districts.geojson").read_text(encoding="utf-8"))
    return {
        f["properties"]["code"]: {"zh-CN": f["properties"]["name_zh"], "en": f["properties"]["name_en"]}
        for f in doc["features"]
    }


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/alerts, /api/v1/incidents and /api/v1/maintenance.

    Every alert the routes return (and every feed event) carries ``texts``:
    ``{"zh-CN": {"title", "text"}, "en": {…}}``, rendered from the record's
    stable fields by :mod:`alerts.texts` (rule names, local times), beside
    the record's own ``rule``, ``message`` and UTC times for machines.
    """
    router = APIRouter()
    alerts = AlertStore(ctx.pool)
    metric_texts: dict[str, MetricText] = {}
    for model in ctx.models.all():
        for name, metric in model.metrics.items():
            label = {"zh-CN": metric.label.get("zh", name), "en": metric.label.get("en", name)}
            metric_texts.setdefault(name, MetricText(label, metric.unit))
    loaded: dict[str, tuple[AlertTexts, dict[str, dict[str, str]]]] = {}

    def texts() -> tuple[AlertTexts, dict[str, dict[str, str]]]:
        # Read the package data on first use, not when the app is built.
        if "t" not in loaded:
            loaded["t"] = (load_texts(), _district_names())
        return loaded["t"]

    def with_texts(alert: dict[str, Any]) -> dict[str, Any]:
        catalog, districts = texts()
        if alert.get("rule"):
            alert["texts"] = catalog.render_all(alert, metrics=metric_texts, districts=districts)
        return alert

    @router.get("/api/v1/alerts", tags=["alerts"])
    async def list_alerts(
        principal: Annotated[Principal, Depends(require("alerts:read"))],
        state: Annotated[str | None, Query(pattern=_STATE, description="`active` = not resolved")] = None,
        severity: Annotated[str | None, Query(pattern=_SEVERITY, description="at least this severity")] = None,
        district: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
        device: str | None = None,
        device_class: Annotated[str | None, Query(alias="class", max_length=20)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,  # deeper: filter by time instead
        sort: Annotated[
            str, Query(pattern="^(time|severity)$", description="`severity`: most severe first, then newest")
        ] = "time",
        shelved: Annotated[bool | None, Query(description="only shelved (true) or not shelved (false) alerts")] = None,
    ) -> dict[str, Any]:
        """Alerts within the caller's grants, newest first or (``sort=severity``) most severe first."""
        scope = Scope.of(principal)
        districts = scope.districts_for(district)
        classes = scope.classes_for(device_class)
        if districts == [] or classes == []:
            return {"items": [], "limit": limit, "offset": offset}
        items = await alerts.query(
            state=state,
            severity=severity,
            districts=districts,
            device=device,
            device_class=classes[0] if classes is not None and len(classes) == 1 else None,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
            shelved=shelved,
            sort=sort,
        )
        if classes is not None and len(classes) > 1:
            # Several granted classes: the store filters one class, so the rest is dropped here
            # (a page can come out shorter than the limit; paging by offset stays correct).
            items = [a for a in items if a.get("device_class") in classes]
        return {"items": [with_texts(a) for a in items], "limit": limit, "offset": offset}

    @router.get("/api/v1/alerts/stream", tags=["alerts"])
    async def stream(
        request: Request,
        principal: Annotated[Principal, Depends(require("alerts:read"))],
        severity: Annotated[str | None, Query(pattern=_SEVERITY)] = None,
        district: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
        device_class: Annotated[str | None, Query(alias="class", max_length=20)] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: every alert change within the caller's grants (``event: alert``), heartbeats."""
        feed = ctx.alert_feed
        if feed is None:
            raise HTTPException(503, "the live feed is not running in this process")
        floor = int(Severity.parse(severity)) if severity else 0
        scope = Scope.of(principal)

        def accept(ev: dict[str, Any]) -> bool:
            sev = ev.get("severity")
            if floor and (not isinstance(sev, str) or int(Severity.parse(sev)) < floor):
                return False
            ev_class = ev.get("class", ev.get("device_class"))
            # The grant first: an event outside it never reaches this subscriber's queue.
            if not scope.allows(ev.get("district"), ev_class):
                return False
            if district and ev.get("district") != district:
                return False
            return not (device_class and ev_class != device_class)

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 3000\n: connected\n\n"
            async for ev in feed.subscribe(accept):
                if await request.is_disconnected():
                    break
                if ev is None:
                    yield b": heartbeat\n\n"
                    continue
                data = json.dumps(with_texts(dict(ev)), ensure_ascii=False, separators=(",", ":"))
                yield f"event: alert\nid: {ev.get('id', '')}\ndata: {data}\n\n".encode()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def visible(alert_id: str, principal: Principal) -> dict[str, Any]:
        try:
            alert = await alerts.get(alert_id)
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None
        if not Scope.of(principal).allows(alert.get("district"), alert.get("device_class")):
            raise HTTPException(404, f"no alert {alert_id}")
        return alert

    @router.get("/api/v1/alerts/{alert_id}", tags=["alerts"])
    async def get_alert(
        alert_id: str, principal: Annotated[Principal, Depends(require("alerts:read"))]
    ) -> dict[str, Any]:
        """One alert with its history (404 outside the caller's grants)."""
        return with_texts(await visible(alert_id, principal))

    async def _transition(
        alert_id: str,
        action: str,
        body: CommentIn,
        request: Request,
        principal: Principal,
        assignee: str | None = None,
        shelve_until: datetime | None = None,
        shelve_for_s: int | None = None,
    ) -> dict[str, Any]:
        await visible(alert_id, principal)
        try:
            out = await alerts.transition(
                alert_id,
                action,
                principal.user,
                body.comment,
                assignee,
                shelve_until=shelve_until,
                shelve_for_s=shelve_for_s,
            )
        except AlertNotFound:
            raise HTTPException(404, f"no alert {alert_id}") from None
        except BadTransition as exc:
            await record(
                request, principal, f"alert.{action}", f"alert/{alert_id}", {"error": str(exc)}, outcome="failure"
            )
            raise HTTPException(409, str(exc)) from exc
        details: dict[str, Any] = {"comment": body.comment[:500]} if body.comment else {}
        if assignee is not None:
            details["assignee"] = assignee
        until = out.get("shelved_until")
        if action == "shelve" and isinstance(until, datetime):
            details["until"] = until.isoformat()
        await record(request, principal, f"alert.{action}", f"alert/{alert_id}", details)
        return with_texts(out)

    @router.post("/api/v1/alerts/{alert_id}/ack", tags=["alerts"])
    async def ack(alert_id: str, body: CommentIn, request: Request, principal: _Act) -> dict[str, Any]:
        """open → acknowledged."""
        return await _transition(alert_id, "ack", body, request, principal)

    @router.post("/api/v1/alerts/{alert_id}/resolve", tags=["alerts"])
    async def resolve(alert_id: str, body: CommentIn, request: Request, principal: _Act) -> dict[str, Any]:
        """open | acknowledged → resolved."""
        return await _transition(alert_id, "resolve", body, request, principal)

    @router.post("/api/v1/alerts/{alert_id}/reopen", tags=["alerts"])
    async def reopen(alert_id: str, body: CommentIn, request: Request, principal: _Act) -> dict[str, Any]:
        """resolved → open (counted in ``reopened``)."""
        return await _transition(alert_id, "reopen", body, request, principal)

    @router.post("/api/v1/alerts/{alert_id}/assign", tags=["alerts"])
    async def assign(alert_id: str, body: AssignIn, request: Request, principal: _Act) -> dict[str, Any]:
        """Set the assignee."""
        return await _transition(alert_id, "assign", body, request, principal, body.assignee)

    @router.post("/api/v1/alerts/{alert_id}/comment", tags=["alerts"])
    async def comment(alert_id: str, body: CommentIn, request: Request, principal: _Act) -> dict[str, Any]:
        """Add a comment; the state does not change."""
        return await _transition(alert_id, "comment", body, request, principal)

    @router.post("/api/v1/alerts/{alert_id}/shelve", tags=["alerts"])
    async def shelve(alert_id: str, body: ShelveIn, request: Request, principal: _Act) -> dict[str, Any]:
        """Shelve (silence) an open or acknowledged alert until ``until`` or for ``duration_s``, with a reason.

        At most 7 days (409 beyond). The state does not change; at the expiry the alert returns to normal
        (``unshelve`` by ``system`` in its history). Audited as ``alert.shelve``.
        """
        comment = CommentIn(comment=body.reason)
        return await _transition(
            alert_id, "shelve", comment, request, principal, shelve_until=body.until, shelve_for_s=body.duration_s
        )

    @router.post("/api/v1/alerts/{alert_id}/unshelve", tags=["alerts"])
    async def unshelve(alert_id: str, body: CommentIn, request: Request, principal: _Act) -> dict[str, Any]:
        """End a shelving early: the alert is back to normal."""
        return await _transition(alert_id, "unshelve", body, request, principal)

    @router.get("/api/v1/incidents", tags=["alerts"])
    async def incidents(
        principal: Annotated[Principal, Depends(require("alerts:read"))],
        state: Annotated[str | None, Query(pattern=_STATE)] = None,
        district: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
    ) -> dict[str, Any]:
        """District incidents grouping many devices' alerts of one rule (within the caller's grants)."""
        scope = Scope.of(principal)
        rows = await alerts.incidents(state=state, district=district)
        # Incidents carry a district; those with a class are also filtered by the class grant.
        visible_rows = [
            r
            for r in rows
            if scope.allows_district(r.get("district"))
            and ("device_class" not in r or scope.allows_class(r["device_class"]))
        ]
        return {"items": visible_rows}

    @router.post("/api/v1/maintenance", tags=["alerts"], status_code=201)
    async def add_maintenance(body: MaintenanceIn, request: Request, principal: _Act) -> dict[str, Any]:
        """Suppress alerts for a district, a device or a class for a while (within the caller's grants)."""
        scope = Scope.of(principal)
        if not scope.unrestricted:
            # A scoped operator may silence only what it can see: a granted district, device or class.
            district = body.district or (body.device_code[:6] if body.device_code else None)
            if (scope.districts and district not in scope.districts) or (
                scope.classes and body.device_class not in scope.classes and body.device_code is None
            ):
                raise HTTPException(403, "a maintenance window must stay within your district and class grants")
            if body.device_code is not None:
                async with ctx.pool.connection() as conn:
                    dev = await (
                        await conn.execute(
                            "select district, device_class from devices where code = %s", (body.device_code,)
                        )
                    ).fetchone()
                if dev is None or not scope.allows(dev[0], dev[1]):
                    raise HTTPException(404, f"no device {body.device_code}")
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
                        principal.user,
                    ),
                )
            ).fetchone()
        assert row is not None
        out = {"id": row[0], **body.model_dump(), "actor": principal.user}
        await record(
            request,
            principal,
            "maintenance.create",
            f"maintenance/{row[0]}",
            {k: str(v) if v is not None else None for k, v in body.model_dump(exclude={"actor"}).items()},
        )
        return out

    @router.get("/api/v1/maintenance", tags=["alerts"])
    async def list_maintenance(
        principal: Annotated[Principal, Depends(require("alerts:read"))], active: bool = True
    ) -> dict[str, Any]:
        """Maintenance windows (by default only those not yet over) that concern the caller's grants."""
        query = "select * from maintenance_windows" + (" where ends_at > now()" if active else "")
        async with ctx.pool.connection() as conn:
            cur = conn.cursor()
            await cur.execute(query + " order by starts_at desc limit 500")
            cols = [d.name for d in cur.description or []]
            rows = await cur.fetchall()
        scope = Scope.of(principal)
        items = [dict(zip(cols, r, strict=True)) for r in rows]

        def concerns(w: dict[str, Any]) -> bool:
            # A city-wide window (no district, device or class) concerns everybody.
            district = w.get("district") or (w["device_code"][:6] if w.get("device_code") else None)
            if district is not None and not scope.allows_district(district):
                return False
            return w.get("device_class") is None or scope.allows_class(w["device_class"])

        return {"items": [w for w in items if concerns(w)]}

    return router
