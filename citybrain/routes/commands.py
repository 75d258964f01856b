"""Downlink command routes: queue a command for a device, and follow its lifecycle.

Commands are validated against the device's model (``commands`` in
``devices/data/models/*.yaml``) and stored ``queued``; the dispatcher
(:mod:`ingest.commands`) sends them when the device is online. See docs/commands.md.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from citybrain.routes.context import ApiContext
from devices.code import parse as parse_code
from devices.errors import DeviceCodeError, ModelError
from ingest.commands import CommandStore, NewCommand, validate_params
from ingest.errors import CommandError

__all__ = ["CommandIn", "build"]


class CommandIn(BaseModel):
    """A command to send."""

    name: str = Field(description="Command name from the device's model")
    params: dict[str, Any] = Field(default_factory=dict)
    ttl_s: int | None = Field(
        default=None, gt=0, le=7 * 86400, description="Wait this long for the device to be online"
    )
    timeout_s: int | None = Field(default=None, gt=0, le=3600, description="Wait this long for the device's answer")


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/devices/{code}/commands and /api/v1/commands."""
    router = APIRouter()
    store = CommandStore(ctx.pool)

    async def model_key(code: str) -> str:
        try:
            parse_code(code)
        except DeviceCodeError as exc:
            raise HTTPException(422, str(exc)) from exc
        async with ctx.pool.connection() as conn:
            row = await (await conn.execute("select model from devices where code = %s", (code,))).fetchone()
        if row is None:
            raise HTTPException(404, f"no device {code}")
        return str(row[0])

    @router.post("/api/v1/devices/{code}/commands", tags=["commands"], status_code=201)
    async def create_command(code: str, cmd: CommandIn) -> Any:
        try:
            model = ctx.models.get(await model_key(code))
        except ModelError as exc:
            raise HTTPException(409, str(exc)) from exc
        spec = model.commands.get(cmd.name)
        try:
            params = validate_params(spec, cmd.name, cmd.params)
        except CommandError as exc:
            return JSONResponse({"reason": exc.reason, "detail": exc.detail}, status_code=422)
        assert spec is not None
        row = await store.create(
            NewCommand(
                device_code=code,
                name=cmd.name,
                params=params,
                ttl_s=cmd.ttl_s or spec.ttl_s,
                timeout_s=cmd.timeout_s or spec.timeout_s,
                transport="hj212" if model.adapter == "hj212" else "mqtt",
            )
        )
        return row

    @router.get("/api/v1/devices/{code}/commands", tags=["commands"])
    async def list_commands(code: str) -> list[dict[str, Any]]:
        await model_key(code)
        return await store.list_for(code)

    @router.get("/api/v1/commands/{command_id}", tags=["commands"])
    async def get_command(command_id: str) -> dict[str, Any]:
        row = await store.get(command_id)
        if row is None:
            raise HTTPException(404, f"no command {command_id}")
        return row

    return router
