"""Downlink command routes: queue a command for a device, and follow its lifecycle.

Commands are validated against the device's model (``commands`` in
``devices/data/models/*.yaml``) and stored ``queued``; the dispatcher
(:mod:`ingest.commands`) sends them when the device is online. See docs/commands.md.
Sending needs ``commands:send``, reading ``devices:read``; a device (or a
command of a device) outside the caller's grants answers 404. Every command
sent is audited with the caller as actor.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from citybrain.routes.context import ApiContext
from citybrain.routes.devices import scoped_device
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from citybrain.security.scope import Scope
from devices.errors import ModelError
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

    async def model_key(code: str, principal: Principal) -> str:
        _, model, _ = await scoped_device(ctx, code, principal)
        return model

    @router.post("/api/v1/devices/{code}/commands", tags=["commands"], status_code=201)
    async def create_command(
        code: str,
        cmd: CommandIn,
        request: Request,
        principal: Annotated[Principal, Depends(require("commands:send"))],
    ) -> Any:
        try:
            model = ctx.models.get(await model_key(code, principal))
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
        await record(
            request,
            principal,
            "command.send",
            f"device/{code}",
            {"command": row["id"], "name": cmd.name, "params": params},
        )
        return row

    @router.get("/api/v1/devices/{code}/commands", tags=["commands"])
    async def list_commands(
        code: str, principal: Annotated[Principal, Depends(require("devices:read"))]
    ) -> list[dict[str, Any]]:
        await model_key(code, principal)
        return await store.list_for(code)

    @router.get("/api/v1/commands/{command_id}", tags=["commands"])
    async def get_command(
        command_id: str, principal: Annotated[Principal, Depends(require("devices:read"))]
    ) -> dict[str, Any]:
        row = await store.get(command_id)
        if row is None:
            raise HTTPException(404, f"no command {command_id}")
        scope = Scope.of(principal)
        if not scope.unrestricted:
            code = str(row["device_code"])
            async with ctx.pool.connection() as conn:
                dev = await (
                    await conn.execute("select district, device_class from devices where code = %s", (code,))
                ).fetchone()
            if dev is None or not scope.allows(dev[0], dev[1]):
                raise HTTPException(404, f"no command {command_id}")
        return row

    return router
