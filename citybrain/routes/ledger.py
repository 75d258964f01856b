"""Device ledger routes: search, update, lifecycle, credentials, code allocation, CSV export.

Registration (``POST /api/v1/devices``) and ``GET /api/v1/devices/{code}``
stay in :mod:`citybrain.routes.devices`. Personal data (the contact) is masked
in every response; the CSV export leaves it out, so an exported file can be
edited and re-imported without overwriting contacts with masks.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from citybrain.routes.context import ApiContext
from devices.errors import AllocationError, DeviceCodeError, LedgerError, TransitionError, UnknownDeviceError
from devices.ledger import DeviceQuery, Ledger, mask_contact
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


def _public(row: dict[str, Any]) -> dict[str, Any]:
    row["contact"] = mask_contact(row.get("contact"))
    return row


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
    ) -> DeviceQuery:
        box = None
        if bbox:
            try:
                w, s, e, n = (float(v) for v in bbox.split(","))
            except ValueError:
                raise HTTPException(422, "bbox must be west,south,east,north in degrees") from None
            box = (w, s, e, n)
        try:
            return DeviceQuery(q, device_class, class_code, district, state, model, box, after, limit)
        except LedgerError as exc:
            raise HTTPException(422, str(exc)) from exc

    @router.get("/api/v1/devices", tags=["devices"])
    async def list_devices(
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
        """Devices in code order, with the total matching the filters and a keyset cursor."""
        page = await ledger.search(query(q, device_class, class_code, district, state, model, bbox, after, limit))
        return {"items": [_public(r) for r in page.items], "total": page.total, "next_after": page.next_after}

    @router.get("/api/v1/devices.csv", tags=["devices"])
    async def export_devices(
        q: str | None = None,
        device_class: str | None = Query(None, alias="class"),
        class_code: str | None = None,
        district: str | None = None,
        state: str | None = None,
        model: str | None = None,
        bbox: str | None = None,
    ) -> StreamingResponse:
        """Every matching device as CSV, streamed (import format, without contacts)."""
        dq = query(q, device_class, class_code, district, state, model, bbox, None, 1)
        columns = export_columns()

        async def body() -> AsyncIterator[str]:
            yield _csv_line(columns)
            async for row in ledger.iter_export(dq):
                yield _csv_line([_export_value(row, c) for c in columns])

        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="devices.csv"'},
        )

    @router.patch("/api/v1/devices/{code}", tags=["devices"])
    async def update_device(code: str, patch: DevicePatch) -> dict[str, Any]:
        changes = patch.model_dump(exclude_unset=True)
        try:
            return _public(await ledger.update(code, changes, actor="api"))
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        except (LedgerError, DeviceCodeError) as exc:
            raise HTTPException(422, str(exc)) from exc

    @router.post("/api/v1/devices/{code}/transitions", tags=["devices"])
    async def transition_device(code: str, body: TransitionIn) -> dict[str, Any]:
        """Move a device through its lifecycle (registered → active ⇄ suspended → decommissioned)."""
        try:
            return await ledger.transition(code, body.to, body.reason, actor="api")
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc

    @router.delete("/api/v1/devices/{code}", tags=["devices"])
    async def decommission_device(
        code: str, reason: str = Query("decommissioned via API", min_length=1, max_length=500)
    ) -> dict[str, Any]:
        """Decommission (the row and its history stay; the code is never reused)."""
        try:
            return await ledger.transition(code, "decommissioned", reason, actor="api")
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc

    @router.get("/api/v1/devices/{code}/history", tags=["devices"])
    async def device_history(code: str) -> list[dict[str, Any]]:
        try:
            return await ledger.history(code)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None

    @router.post("/api/v1/devices/{code}/credentials", tags=["devices"], status_code=201)
    async def rotate_credentials(code: str, response: Response) -> dict[str, str]:
        """Issue a new MQTT secret. It is returned once, here, and stored only hashed."""
        try:
            secret = await ledger.rotate_credentials(code, actor="api")
            full = await ledger.lookup(code)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
        response.headers["Cache-Control"] = "no-store"
        return {"username": full, "secret": secret}

    @router.delete("/api/v1/devices/{code}/credentials", tags=["devices"], status_code=204)
    async def revoke_credentials(code: str) -> Response:
        try:
            await ledger.revoke_credentials(code, actor="api")
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        return Response(status_code=204)

    @router.post("/api/v1/device-codes", tags=["devices"], status_code=201)
    async def allocate_codes(body: AllocateIn) -> dict[str, list[str]]:
        """Allocate new, unused device codes of a district and class."""
        try:
            codes = await ledger.allocate(body.district, body.class_code, body.count)
        except AllocationError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"codes": [c.full for c in codes]}

    return router
