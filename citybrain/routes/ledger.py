"""Device ledger routes: search, update, lifecycle, credentials, code allocation, CSV export.

Registration (``POST /api/v1/devices``) and ``GET /api/v1/devices/{code}``
stay in :mod:`citybrain.routes.devices`. Fields are masked by grade for callers
without ``internal:read`` / ``sensitive:read`` (:mod:`citybrain.security.scope`);
the CSV export leaves the contact out, so an exported file can be edited and
re-imported without overwriting contacts with masks. Lists are limited to the
caller's district and class grants; a device outside them answers 404. Every
write is audited with the caller as actor.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from psycopg import sql
from pydantic import BaseModel, Field

from citybrain.routes.context import ApiContext
from citybrain.routes.devices import audit_revealed
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from citybrain.security.scope import Masker, Scope
from devices.errors import AllocationError, DeviceCodeError, LedgerError, TransitionError, UnknownDeviceError
from devices.ledger import DeviceQuery, Ledger
from devices.lifecycle import STATES
from devices.rows import COLUMNS

__all__ = ["DevicePatch", "TransitionIn", "build", "export_columns"]


class DevicePatch(BaseModel):
    """Fields to change (PATCH): only those present are written."""

    model_config = {"extra": "forbid"}

    name: str | None = Field(default=None, max_length=200)
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    crs: str | None = Field(default=None, pattern="^(WGS84|GCJ02)$")
    grid: str | None = Field(default=None, pattern="^[0-9]{15}$")
    owner_unit: str | None = Field(default=None, max_length=200)
    installer: str | None = Field(default=None, max_length=200)
    contact: str | None = Field(default=None, max_length=100)
    install_date: date | None = None
    attributes: dict[str, Any] | None = None
    model: str | None = Field(default=None, description="Model id or id@version; must fit the device's class")
    alias: str | None = Field(default=None, description="Real 16-digit 部件 code of the same facility")
    serial: str | None = Field(default=None, max_length=64)


class TransitionIn(BaseModel):
    """A lifecycle transition."""

    to: str = Field(description=f"Target state: one of {', '.join(STATES)}")
    reason: str = Field(min_length=1, max_length=500)


class AllocateIn(BaseModel):
    """Codes to allocate."""

    district: str = Field(pattern="^[0-9]{6}$")
    class_code: str = Field(pattern="^[0-9]{4}$")
    count: int = Field(default=1, ge=1, le=10_000)


class _ScopedQuery(DeviceQuery):
    """A device query narrowed to a principal's district and class grants.

    Several granted districts cannot be said with :class:`DeviceQuery`'s single
    ``district``, so the grant is added to its WHERE clause here.
    """

    __slots__ = ("_scope",)
    _scope: Scope

    def __init__(self, base: DeviceQuery, scope: Scope) -> None:
        fields = {name: getattr(base, name) for name in DeviceQuery.__dataclass_fields__}
        super().__init__(**fields)
        object.__setattr__(self, "_scope", scope)

    def where(self) -> sql.Composed:
        clause = super().where()
        scope = self._scope
        if scope.districts:
            clause = sql.SQL("{} and district = any({})").format(clause, sql.Literal(sorted(scope.districts)))
        if scope.classes:
            clause = sql.SQL("{} and device_class = any({})").format(clause, sql.Literal(sorted(scope.classes)))
        return clause


def export_columns() -> list[str]:
    """CSV export columns: the import columns (minus contact) plus the state."""
    return [c for c in COLUMNS if c != "contact"] + ["state"]


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _export_value(row: dict[str, Any], column: str) -> Any:
    if column == "class_code":
        return row["code"][6:10]
    value = row.get(column)
    if column == "attributes":
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else ""
    return "" if value is None else value


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/devices (ledger management) and /api/v1/device-codes."""
    router = APIRouter()
    ledger = Ledger(ctx.pool, ctx.models, assigner=ctx.assigner)
    masker = Masker(ctx.models)
    models = ctx.models

    def query(
        q: str | None,
        device_class: str | None,
        class_code: str | None,
        district: str | None,
        state: str | None,
        model: str | None,
        bbox: str | None,
        after: str | None,
        limit: int,
        principal: Principal,
    ) -> DeviceQuery:
        box = None
        if bbox:
            try:
                w, s, e, n = (float(v) for v in bbox.split(","))
            except ValueError:
                raise HTTPException(422, "bbox must be west,south,east,north in degrees") from None
            box = (w, s, e, n)
        try:
            base = DeviceQuery(q, device_class, class_code, district, state, model, box, after, limit)
        except LedgerError as exc:
            raise HTTPException(422, str(exc)) from exc
        scope = Scope.of(principal)
        return base if scope.unrestricted else _ScopedQuery(base, scope)

    async def visible(code: str, principal: Principal) -> dict[str, Any]:
        # The device's row if the principal may see it; 404 for unknown and for out-of-grant alike.
        try:
            row = await ledger.get(code)
        except (UnknownDeviceError, DeviceCodeError):
            raise HTTPException(404, f"no device {code}") from None
        if not Scope.of(principal).allows(row.get("district"), row.get("device_class")):
            raise HTTPException(404, f"no device {code}")
        return row

    @router.get("/api/v1/devices", tags=["devices"])
    async def list_devices(
        request: Request,
        principal: Annotated[Principal, Depends(require("devices:read"))],
        q: str | None = Query(None, description="Code or alias prefix, name substring, or exact serial"),
        device_class: str | None = Query(None, alias="class", description="Device class, e.g. air"),
        class_code: str | None = Query(None, description="4-digit 大类+小类, e.g. 0308"),
        district: str | None = Query(None, description="GB/T 2260 county code"),
        state: str | None = Query(None, description=", ".join(STATES)),
        model: str | None = Query(None, description="Model key id@version"),
        bbox: str | None = Query(None, description="west,south,east,north (lon/lat degrees)"),
        after: str | None = Query(None, description="Cursor: next_after of the previous page"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Devices in code order (within the caller's grants), with the total matching the filters and a cursor."""
        page = await ledger.search(
            query(q, device_class, class_code, district, state, model, bbox, after, limit, principal)
        )
        items = []
        revealed: dict[str, list[str]] = {}
        for r in page.items:
            shown, fields = masker.device(r, principal)
            items.append(shown)
            if fields:
                revealed[r["code"]] = fields
        await audit_revealed(request, principal, "devices", revealed)
        return {"items": items, "total": page.total, "next_after": page.next_after}

    @router.get("/api/v1/devices.csv", tags=["devices"])
    async def export_devices(
        request: Request,
        principal: Annotated[Principal, Depends(require("devices:read"))],
        q: str | None = None,
        device_class: str | None = Query(None, alias="class"),
        class_code: str | None = None,
        district: str | None = None,
        state: str | None = None,
        model: str | None = None,
        bbox: str | None = None,
    ) -> StreamingResponse:
        """Every matching device within the caller's grants as CSV, streamed (import format, without contacts)."""
        dq = query(q, device_class, class_code, district, state, model, bbox, None, 1, principal)
        scope = Scope.of(principal)
        columns = export_columns()
        # iter_export pages with plain DeviceQuery copies, so the grant is applied row by row too.
        await record(request, principal, "device.export", "devices.csv", {"filters": dict(request.query_params)})

        async def body() -> AsyncIterator[str]:
            yield _csv_line(columns)
            async for row in ledger.iter_export(dq):
                if not scope.allows(row.get("district"), row.get("device_class")):
                    continue
                shown, _ = masker.device(row, principal)
                yield _csv_line([_export_value(shown, c) for c in columns])

        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="devices.csv"'},
        )

    @router.patch("/api/v1/devices/{code}", tags=["devices"])
    async def update_device(
        code: str,
        patch: DevicePatch,
        request: Request,
        principal: Annotated[Principal, Depends(require("devices:write"))],
    ) -> dict[str, Any]:
        full = (await visible(code, principal))["code"]
        changes = patch.model_dump(exclude_unset=True)
        try:
            row = await ledger.update(full, changes, actor=principal.user)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        except (LedgerError, DeviceCodeError) as exc:
            raise HTTPException(422, str(exc)) from exc
        # The names of the changed fields only: values may be graded (a contact).
        await record(request, principal, "device.update", f"device/{full}", {"fields": sorted(changes)})
        return masker.device(row, principal)[0]

    async def _transition(
        code: str, target: str, reason: str, request: Request, principal: Principal
    ) -> dict[str, Any]:
        full = (await visible(code, principal))["code"]
        try:
            out = await ledger.transition(full, target, reason, actor=principal.user)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
        await record(request, principal, "device.transition", f"device/{full}", {"to": target, "reason": reason})
        return out

    @router.post("/api/v1/devices/{code}/transitions", tags=["devices"])
    async def transition_device(
        code: str,
        body: TransitionIn,
        request: Request,
        principal: Annotated[Principal, Depends(require("devices:write"))],
    ) -> dict[str, Any]:
        """Move a device through its lifecycle (registered → active ⇄ suspended → decommissioned)."""
        return await _transition(code, body.to, body.reason, request, principal)

    @router.delete("/api/v1/devices/{code}", tags=["devices"])
    async def decommission_device(
        code: str,
        request: Request,
        principal: Annotated[Principal, Depends(require("devices:write"))],
        reason: str = Query("decommissioned via API", min_length=1, max_length=500),
    ) -> dict[str, Any]:
        """Decommission (the row and its history stay; the code is never reused)."""
        return await _transition(code, "decommissioned", reason, request, principal)

    @router.get("/api/v1/devices/{code}/history", tags=["devices"])
    async def device_history(
        code: str, principal: Annotated[Principal, Depends(require("devices:read"))]
    ) -> list[dict[str, Any]]:
        full = (await visible(code, principal))["code"]
        history = await ledger.history(full)
        if not principal.can("internal:read"):
            # Who changed a device is internal.
            for h in history:
                h["actor"] = None
        return history

    @router.post("/api/v1/devices/{code}/credentials", tags=["devices"], status_code=201)
    async def rotate_credentials(
        code: str,
        response: Response,
        request: Request,
        principal: Annotated[Principal, Depends(require("devices:write"))],
    ) -> dict[str, str]:
        """Issue a new MQTT secret. It is returned once, here, and stored only hashed."""
        full = (await visible(code, principal))["code"]
        try:
            secret = await ledger.rotate_credentials(full, actor=principal.user)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
        await record(request, principal, "device.credentials_rotate", f"device/{full}")
        response.headers["Cache-Control"] = "no-store"
        return {"username": full, "secret": secret}

    @router.delete("/api/v1/devices/{code}/credentials", tags=["devices"], status_code=204)
    async def revoke_credentials(
        code: str, request: Request, principal: Annotated[Principal, Depends(require("devices:write"))]
    ) -> Response:
        full = (await visible(code, principal))["code"]
        try:
            await ledger.revoke_credentials(full, actor=principal.user)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        await record(request, principal, "device.credentials_revoke", f"device/{full}")
        return Response(status_code=204)

    @router.post("/api/v1/device-codes", tags=["devices"], status_code=201)
    async def allocate_codes(
        body: AllocateIn, request: Request, principal: Annotated[Principal, Depends(require("devices:write"))]
    ) -> dict[str, list[str]]:
        """Allocate new, unused device codes of a district and class (within the caller's grants)."""
        scope = Scope.of(principal)
        classes = {m.device_class for m in models.all() if body.class_code in m.class_codes}
        if not scope.allows_district(body.district) or (scope.classes and not classes & scope.classes):
            raise HTTPException(403, f"district {body.district} / class {body.class_code} is outside your grants")
        try:
            codes = await ledger.allocate(body.district, body.class_code, body.count)
        except AllocationError as exc:
            raise HTTPException(422, str(exc)) from exc
        await record(
            request,
            principal,
            "device.allocate",
            f"device-codes/{body.district}{body.class_code}",
            {"count": len(codes), "first": codes[0].full if codes else None},
        )
        return {"codes": [c.full for c in codes]}

    return router
