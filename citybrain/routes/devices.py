"""Device ledger routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from citybrain.routes.context import ApiContext
from devices.code import parse as parse_code
from devices.errors import DeviceCodeError, LedgerError, UnknownDeviceError
from devices.ledger import Ledger, NewDevice, mask_contact

__all__ = ["DeviceIn", "build", "device_class_of"]


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


async def device_class_of(ctx: ApiContext, code: str) -> tuple[str, str]:
    """(device class, model key) of a registered device, or an HTTP error."""
    try:
        parse_code(code)
    except DeviceCodeError as exc:
        raise HTTPException(422, str(exc)) from exc
    async with ctx.pool.connection() as conn:
        row = await (await conn.execute("select device_class, model from devices where code = %s", (code,))).fetchone()
    if row is None:
        raise HTTPException(404, f"no device {code}")
    return row[0], row[1]


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/devices and /api/v1/models."""
    router = APIRouter()
    models = ctx.models
    ledger = Ledger(ctx.pool, ctx.models, assigner=ctx.assigner)

    @router.get("/api/v1/models", tags=["devices"])
    async def list_models() -> list[dict[str, Any]]:
        return [m.to_json() for m in models.all()]

    @router.post("/api/v1/devices", tags=["devices"], status_code=201)
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
                    serial=dev.serial,
                ),
                actor="api",
            )
        except (DeviceCodeError, LedgerError) as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"code": info.code, "model": info.model, "district": info.district, "state": info.state}

    @router.get("/api/v1/devices/{code}", tags=["devices"])
    async def get_device(code: str) -> dict[str, Any]:
        try:
            row = await ledger.get(code)
        except UnknownDeviceError:
            raise HTTPException(404, f"no device {code}") from None
        row["contact"] = mask_contact(row.get("contact"))  # personal data: masked by default
        return row

    return router
