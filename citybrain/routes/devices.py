"""Device ledger routes: registration, one device, models.

Every route declares its permission with :func:`citybrain.security.auth.require`;
a device outside the caller's district/class grants answers 404, and fields
are masked by grade (:mod:`citybrain.security.scope`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from citybrain.routes.context import ApiContext
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from citybrain.security.scope import Masker, Scope
from devices.code import parse as parse_code
from devices.errors import DeviceCodeError, LedgerError, ModelError, UnknownDeviceError
from devices.ledger import Ledger, NewDevice
from streams.debug import ONBOARD_CAPTURE, start_capture

__all__ = ["DeviceIn", "audit_revealed", "build", "device_class_of", "scoped_device"]


class DeviceIn(BaseModel):
    """A device to register."""

    code: str = Field(description="17-character city device code, or the real 16-digit 部件 code (alias)")
    model: str = Field(description="Model id (latest version) or id@version")
    name: str = ""
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    crs: str = Field(default="WGS84", pattern="^(WGS84|GCJ02)$")
    owner_unit: str | None = None
    installer: str | None = None
    contact: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    serial: str | None = Field(default=None, max_length=64, description="Manufacturer serial / IMEI")


async def scoped_device(ctx: ApiContext, code: str, principal: Principal | None) -> tuple[str, str, str]:
    """(device class, model key, district) of a registered device the principal may see.

    Raises:
        HTTPException: 422 for a malformed code; 404 if unknown *or* outside the
            principal's grants (the same answer, so codes cannot be probed).
    """
    try:
        parse_code(code)
    except DeviceCodeError as exc:
        raise HTTPException(422, str(exc)) from exc
    async with ctx.pool.connection() as conn:
        row = await (
            await conn.execute("select device_class, model, district from devices where code = %s", (code,))
        ).fetchone()
    if row is None or (principal is not None and not Scope.of(principal).allows(row[2], row[0])):
        raise HTTPException(404, f"no device {code}")
    return row[0], row[1], row[2]


async def device_class_of(ctx: ApiContext, code: str, principal: Principal | None = None) -> tuple[str, str]:
    """(device class, model key) of a registered device (visible to ``principal``), or an HTTP error."""
    device_class, model, _ = await scoped_device(ctx, code, principal)
    return device_class, model


async def audit_revealed(request: Request, principal: Principal, resource: str, revealed: dict[str, list[str]]) -> None:
    """Audit a response that carried sensitive fields unmasked (``{code: [field, …]}``)."""
    if not revealed:
        return
    codes = sorted(revealed)
    fields = sorted({f for fs in revealed.values() for f in fs})
    await record(
        request,
        principal,
        "sensitive.read",
        resource,
        {"devices": codes[:200], "count": len(codes), "fields": fields},
    )


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/devices and /api/v1/models."""
    router = APIRouter()
    models = ctx.models
    ledger = Ledger(ctx.pool, ctx.models, assigner=ctx.assigner)
    masker = Masker(models)

    @router.get("/api/v1/models", tags=["devices"])
    async def list_models(_: Annotated[Principal, Depends(require("devices:read"))]) -> list[dict[str, Any]]:
        return [m.to_json() for m in models.all()]

    @router.post("/api/v1/devices", tags=["devices"], status_code=201)
    async def register_device(
        dev: DeviceIn, request: Request, principal: Annotated[Principal, Depends(require("devices:write"))]
    ) -> dict[str, Any]:
        try:
            device_class: str | None = models.get(dev.model).device_class
        except ModelError:
            device_class = None  # the ledger refuses the unknown model below, with its reason
        # An integrator registers only within its grants (the code starts with the district).
        if not Scope.of(principal).allows(dev.code[:6], device_class):
            raise HTTPException(403, f"district {dev.code[:6]} / class {device_class} is outside your grants")
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
                    serial=dev.serial,
                ),
                actor=principal.user,
            )
        except (DeviceCodeError, LedgerError) as exc:
            raise HTTPException(422, str(exc)) from exc
        # An integrator registers a device to bring it up: its raw messages are captured for
        # the debug view from the start (a bulk import captures none; streams.debug).
        async with ctx.pool.connection() as conn:
            await start_capture(conn, [info.code], ctx.clock() + ONBOARD_CAPTURE, f"register:{principal.user}")
        await record(request, principal, "device.create", f"device/{info.code}", {"model": info.model})
        return {"code": info.code, "model": info.model, "district": info.district, "state": info.state}

    @router.get("/api/v1/devices/{code}", tags=["devices"])
    async def get_device(
        code: str, request: Request, principal: Annotated[Principal, Depends(require("devices:read"))]
    ) -> dict[str, Any]:
        try:
            row = await ledger.get(code)
        except (UnknownDeviceError, DeviceCodeError):
            raise HTTPException(404, f"no device {code}") from None
        if not Scope.of(principal).allows(row.get("district"), row.get("device_class")):
            raise HTTPException(404, f"no device {code}")
        shown, revealed = masker.device(row, principal)
        await audit_revealed(request, principal, f"device/{row['code']}", {row["code"]: revealed} if revealed else {})
        return shown

    return router
