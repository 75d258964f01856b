"""NB-IoT platform push webhook: ``POST /api/v1/ingest/webhook/{platform}``.

The HTTP side of the NB-IoT push: token, body size, the ledger lookup and the
Kafka ack. The body itself (OceanConnect / IoTDA and CTWing push styles) is
decoded by the pure codec :mod:`ingest.adapters.nbiot`.

The platform's ``deviceId`` maps to a device code through the ledger attribute
``nb_device_id``, or is the code itself. The request is answered 200 only after Kafka
acknowledged every message, so a platform that gets anything else retries.
Notifications without data (device added, online/offline …) are acknowledged and ignored.
No token configured → 503 (disabled); bad token → 401; Kafka not connected yet → 503;
oversized body → 413; a body that cannot be used → 400 with
``{"reason", "detail"}``, after the body was dead-lettered (reasons ``bad_json``,
``bad_body``, ``bad_frame_encoding``, ``unknown_device``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from citybrain.routes.context import ApiContext
from citybrain.security.auth import public
from core.records import RawMessage
from ingest.adapters import nbiot
from ingest.errors import DecodeError, IngestError
from ingest.kafka_sink import RawSink

__all__ = ["PLATFORMS", "TOKEN_HEADER", "WebhookDeps", "build"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Citybrain-Token"
PLATFORMS = nbiot.PLATFORMS
_CACHE_MAX = 100_000


@dataclass(frozen=True, slots=True)
class WebhookDeps:
    """What the webhook needs beyond :class:`ApiContext`.

    Attributes:
        sink: Started sink to Kafka (``ingest.kafka_sink.KafkaSink`` with ``source="webhook"``).
        token: Shared secret the platforms send in ``X-Citybrain-Token``; empty refuses every push.
        max_body_bytes: Largest accepted body.
        ack_timeout_s: How long to wait for the Kafka ack before answering 503.
        ready: Whether the sink is connected; until then pushes answer 503 (the platform retries).
    """

    sink: RawSink
    token: str
    max_body_bytes: int = 65536
    ack_timeout_s: float = 15.0
    ready: Callable[[], bool] = field(default=lambda: True)


def build(ctx: ApiContext, deps: WebhookDeps) -> APIRouter:
    """Routes under /api/v1/ingest/webhook.

    Args:
        ctx: Shared API dependencies (pool for the device lookup, registry for metrics).
        deps: Sink and token.

    Returns:
        The router.
    """
    router = APIRouter()
    requests = Counter(
        "citybrain_webhook_requests_total", "Webhook pushes by result", ["platform", "result"], registry=ctx.registry
    )
    forwarded = Counter(
        "citybrain_webhook_messages_forwarded_total",
        "Messages acknowledged by Kafka",
        ["platform"],
        registry=ctx.registry,
    )
    codes: OrderedDict[str, str] = OrderedDict()

    async def device_code(device_id: str) -> str | None:
        found = codes.get(device_id)
        if found is not None:
            codes.move_to_end(device_id)
            return found
        async with ctx.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "select code from devices where (attributes ? 'nb_device_id' and attributes->>'nb_device_id' = %s)"
                    " union all select code from devices where code = %s limit 1",
                    (device_id, device_id),
                )
            ).fetchone()
        if row is None:
            return None  # not cached: the device may be registered in a moment
        codes[device_id] = row[0]
        if len(codes) > _CACHE_MAX:
            codes.popitem(last=False)
        return str(row[0])

    async def read_body(request: Request, platform: str) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > deps.max_body_bytes:
            requests.labels(platform, "too_large").inc()
            raise HTTPException(413, f"body larger than {deps.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > deps.max_body_bytes:
                requests.labels(platform, "too_large").inc()
                raise HTTPException(413, f"body larger than {deps.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def reject(platform: str, body: bytes, reason: str, detail: str, rx: datetime) -> JSONResponse:
        topic = nbiot.topic(platform)
        log.warning("webhook %s rejected (%s): %s", platform, reason, detail)
        try:
            await asyncio.wait_for(await deps.sink.dead_letter(body, reason, detail, topic, rx), deps.ack_timeout_s)
        except (IngestError, TimeoutError) as exc:
            requests.labels(platform, "unavailable").inc()
            raise HTTPException(503, f"could not dead-letter: {exc}") from exc
        requests.labels(platform, reason).inc()
        return JSONResponse({"reason": reason, "detail": detail}, status_code=400)

    # Operator platforms authenticate with the shared X-Citybrain-Token (checked below), not as principals.
    @router.post(
        "/api/v1/ingest/webhook/{platform}",
        tags=["ingest"],
        dependencies=[Depends(public("NB-IoT platforms; shared X-Citybrain-Token"))],
    )
    async def push(platform: str, request: Request) -> Any:
        if platform not in PLATFORMS:
            raise HTTPException(404, f"unknown platform {platform[:40]!r}; known: {', '.join(PLATFORMS)}")
        if not deps.token:
            # Said plainly, so that whoever sets up the platform's push sees what is missing.
            requests.labels(platform, "disabled").inc()
            raise HTTPException(503, "NB-IoT webhook disabled: CITYBRAIN_WEBHOOK_TOKEN is not set on this API")
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), deps.token.encode()):
            requests.labels(platform, "unauthorized").inc()
            raise HTTPException(401, "missing or wrong " + TOKEN_HEADER)
        if not deps.ready():
            requests.labels(platform, "unavailable").inc()
            raise HTTPException(503, "not connected to Kafka yet, retry later", headers={"Retry-After": "5"})
        body = await read_body(request, platform)
        rx = datetime.now(UTC)
        try:
            push = nbiot.decode(platform, body, rx)
        except DecodeError as exc:
            return await reject(platform, body, exc.reason, exc.detail, rx)
        if push is None:
            requests.labels(platform, "ignored").inc()
            return {"accepted": 0, "ignored": True}
        messages: list[RawMessage] = []
        if push.messages:  # an empty services list is an empty push: nothing to look up
            code = await device_code(push.device_id)
            if code is None:
                detail = f"no device with nb_device_id or code {push.device_id!r}"
                return await reject(platform, body, "unknown_device", detail, rx)
            messages = nbiot.raw_messages(push, platform, code, rx)
        try:
            futures = [await deps.sink.submit(m) for m in messages]
            await asyncio.wait_for(asyncio.gather(*futures), deps.ack_timeout_s)
        except (IngestError, TimeoutError) as exc:
            # No 200: the platform keeps the push and retries.
            requests.labels(platform, "unavailable").inc()
            log.error("webhook %s: Kafka did not acknowledge %d messages: %s", platform, len(messages), exc)
            raise HTTPException(503, "storage unavailable, retry later") from exc
        requests.labels(platform, "ok").inc()
        forwarded.labels(platform).inc(len(messages))
        return {"accepted": len(messages)}

    return router
