"""The per-device debug view for integrators: ``GET /api/v1/devices/{code}/debug``.

What an integrator bringing up a device needs on one page (ThingsBoard's and
EMQX's device debug views): the last raw messages as they arrived with what
normalisation made of each (decoded readings, or the reject reason), the dead
letters with their reasons (every source: gateway, HJ 212 server, webhook,
stream worker), and the device's MQTT session and liveness.

It reads the tables the stream worker keeps for it (:mod:`streams.debug`), by
device index. Opening the view captures the device's raw messages for the next
:data:`streams.debug.VIEW_CAPTURE` (workers keep the ring on demand); the answer
says until when. Needs ``devices:debug`` (admins and integrators: raw payloads are
not masked by grade) and the device within the caller's grants (404 otherwise).
For a sensitive class (exact location graded sensitive) without
``sensitive:read``, payloads and decoded values are withheld and only the
reasons are shown. Every answer is audited (``device.debug``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from psycopg.rows import dict_row

from citybrain.routes.context import ApiContext
from citybrain.routes.devices import scoped_device
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from devices.grades import is_sensitive_class
from streams.debug import VIEW_CAPTURE, payload_text, start_capture

__all__ = ["build"]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def build(ctx: ApiContext) -> APIRouter:
    """The route /api/v1/devices/{code}/debug."""
    router = APIRouter()

    @router.get("/api/v1/devices/{code}/debug", tags=["devices"])
    async def debug(
        code: str,
        request: Request,
        principal: Annotated[Principal, Depends(require("devices:debug"))],
        limit: Annotated[int, Query(ge=1, le=100, description="Messages and dead letters, each")] = 20,
    ) -> dict[str, Any]:
        """Recent raw messages with their decoded readings, dead letters with reasons, and the session."""
        device_class, model, district = await scoped_device(ctx, code, principal)
        redact = is_sensitive_class(code) and not principal.can("sensitive:read")
        async with ctx.pool.connection() as conn:
            until = (await start_capture(conn, [code], ctx.clock() + VIEW_CAPTURE, f"view:{principal.user}"))[code]
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select received_at, topic, transport, payload, readings, reject_reason, reject_detail"
                " from device_recent_messages where code = %s order by received_at desc limit %s",
                (code, limit),
            )
            messages = await cur.fetchall()
            await cur.execute(
                "select received_at, reason, detail, source, topic, payload, payload_size from dead_letters"
                " where device_code = %s order by received_at desc limit %s",
                (code, limit),
            )
            dead = await cur.fetchall()
            await cur.execute("select connected, status_at from device_sessions where code = %s", (code,))
            session = await cur.fetchone()
            await cur.execute("select last_seen, last_event_time from device_liveness where code = %s", (code,))
            live = await cur.fetchone()
            await cur.execute("select state from devices where code = %s", (code,))
            state = await cur.fetchone()
        withheld = {"encoding": "withheld", "data": None}
        out = {
            "device": {
                "code": code,
                "model": model,
                "class": device_class,
                "district": district,
                "state": state["state"] if state else None,
            },
            "session": {"connected": session["connected"], "status_at": _iso(session["status_at"])}
            if session
            else None,
            "liveness": {"last_seen": _iso(live["last_seen"]), "last_event_time": _iso(live["last_event_time"])}
            if live
            else None,
            "redacted": redact,
            # Raw messages are kept only while a device is captured (CITYBRAIN_DEBUG_CAPTURE).
            "capture": {"until": _iso(until)},
            "messages": [
                {
                    "received_at": _iso(m["received_at"]),
                    "topic": m["topic"],
                    "transport": m["transport"],
                    "size": len(m["payload"]),
                    "payload": withheld if redact else payload_text(bytes(m["payload"])),
                    "readings": [] if redact else m["readings"],
                    "rejected": {"reason": m["reject_reason"], "detail": m["reject_detail"]}
                    if m["reject_reason"]
                    else None,
                }
                for m in messages
            ],
            "dead_letters": [
                {
                    "received_at": _iso(d["received_at"]),
                    "reason": d["reason"],
                    "detail": d["detail"],
                    "source": d["source"],
                    "topic": d["topic"],
                    "size": d["payload_size"],
                    "payload": withheld if redact else payload_text(bytes(d["payload"])),
                }
                for d in dead
            ],
        }
        await record(
            request, principal, "device.debug", f"device/{code}", {"messages": len(messages), "dead": len(dead)}
        )
        return out

    return router
