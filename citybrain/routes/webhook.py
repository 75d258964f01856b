"""NB-IoT platform push webhook: ``POST /api/v1/ingest/webhook/{platform}``.

NB-IoT devices talk CoAP/LwM2M to an operator platform, which pushes their
data to the application over HTTP (docs/standards.md §6.2). Two push styles
are understood:

* ``oceanconnect`` (Huawei OceanConnect / IoTDA): ``notifyType`` ``deviceDataChanged``
  with one ``service``, or ``deviceDatasChanged`` with ``services``; ``service.data``
  holds the device's fields and ``eventTime`` is ``yyyyMMdd'T'HHmmss'Z'`` (UTC).
* ``ctwing`` (China Telecom AEP): ``messageType`` ``dataReport`` with ``payload``
  and ``timestamp`` (epoch ms).

The service data is either JSON metrics (``{"tilt": 3.5, "battery": 90}``), forwarded
as canonical telemetry JSON, or a binary device frame (the manhole TLV frame)
under ``rawData``, ``APPdata``, ``frame`` or ``payload`` as hex or base64,
forwarded as its bytes. Other notification types (device added, online/offline …)
are acknowledged and ignored.

The platform's ``deviceId`` maps to a device code through the ledger attribute
``nb_device_id``, or is the code itself. The request is answered 200 only after Kafka
acknowledged every message, so a platform that gets anything else retries.
No token configured → 503 (disabled); bad token → 401; Kafka not connected yet → 503;
oversized body → 413; a body that cannot be used → 400 with
``{"reason", "detail"}``, after the body was dead-lettered (reasons ``bad_json``,
``bad_body``, ``bad_frame_encoding``, ``unknown_device``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
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
from core.records import RawMessage, Transport
from ingest.errors import IngestError
from ingest.kafka_sink import RawSink

__all__ = ["PLATFORMS", "TOKEN_HEADER", "WebhookDeps", "build"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Citybrain-Token"
PLATFORMS = ("oceanconnect", "ctwing")
_BINARY_KEYS = ("rawData", "APPdata", "frame", "payload")
_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
_OC_TIME = "%Y%m%dT%H%M%SZ"
_CACHE_MAX = 100_000


class _BadBody(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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


@dataclass(frozen=True, slots=True)
class _Service:
    device_id: str
    service_id: str
    data: Any
    event_time: datetime | None


def _oc_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, _OC_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise _BadBody("bad_body", f"eventTime {text[:40]!r} is not yyyyMMddTHHmmssZ") from None


def _services(platform: str, doc: dict[str, Any]) -> list[_Service] | None:
    """The data-carrying services of a push, or ``None`` for a notification to ignore."""
    device_id = doc.get("deviceId")
    if platform == "oceanconnect":
        kind = doc.get("notifyType")
        items: Any
        if kind == "deviceDataChanged":
            items = [doc.get("service")]
        elif kind == "deviceDatasChanged":
            items = doc.get("services")
            if not isinstance(items, list):
                raise _BadBody("bad_body", "deviceDatasChanged without a services list")
        else:
            return None
        out = []
        for item in items:
            if not isinstance(item, dict) or "data" not in item:
                raise _BadBody("bad_body", "service without data")
            out.append(
                _Service(str(device_id), str(item.get("serviceId", "")), item["data"], _oc_time(item.get("eventTime")))
            )
    else:
        if doc.get("messageType") != "dataReport":
            return None
        ts = doc.get("timestamp")
        when = None
        if isinstance(ts, int) and not isinstance(ts, bool) and 0 < ts < 10**14:
            when = datetime.fromtimestamp(ts / 1000, tz=UTC)
        out = [_Service(str(device_id), str(doc.get("serviceId", "")), doc.get("payload"), when)]
    if not isinstance(device_id, str) or not device_id or len(device_id) > 64:
        raise _BadBody("bad_body", "deviceId missing or not a string of 1..64 characters")
    return out


def _binary(value: str) -> bytes:
    try:
        if _HEX_RE.match(value):
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise _BadBody("bad_frame_encoding", "binary data is neither hex nor base64") from exc


def _payload(service: _Service, received_at: datetime) -> tuple[bytes, str]:
    """(payload bytes, format) of one service's data."""
    data = service.data
    if not isinstance(data, dict):
        raise _BadBody("bad_body", "service data is not an object")
    for key in _BINARY_KEYS:
        value = data.get(key)
        if isinstance(value, str):
            return _binary(value), "binary"
    # Keep what canonical telemetry accepts (numbers, booleans, {"value","unit"});
    # platform bookkeeping fields (strings) are not measurements.
    metrics = {
        k: v
        for k, v in data.items()
        if isinstance(v, int | float) or (isinstance(v, dict) and set(v) <= {"value", "unit"} and "value" in v)
    }
    if not metrics:
        raise _BadBody("bad_body", "service data has neither metrics nor a binary frame")
    ts = (service.event_time or received_at).isoformat()
    return json.dumps({"v": 1, "ts": ts, "metrics": metrics}, separators=(",", ":")).encode(), "json"


def _meta_value(text: str) -> str:
    return re.sub(r"[\r\n=]", "_", text)[:64]


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
        topic = f"webhook/{platform}"
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
            doc = json.loads(body)
        except RecursionError:
            return await reject(platform, body, "bad_json", "nested too deeply", rx)
        except (ValueError, UnicodeDecodeError) as exc:
            return await reject(platform, body, "bad_json", str(exc)[:200], rx)
        if not isinstance(doc, dict):
            return await reject(platform, body, "bad_json", "body is not a JSON object", rx)
        messages: list[RawMessage] = []
        try:
            services = _services(platform, doc)
            if services is None:
                requests.labels(platform, "ignored").inc()
                return {"accepted": 0, "ignored": True}
            for service in services:
                if "\x00" in service.device_id:
                    # PostgreSQL text cannot hold NUL: refused before the ledger lookup, and dead-lettered.
                    raise _BadBody("bad_body", "deviceId contains a NUL character")
                code = await device_code(service.device_id)
                if code is None:
                    raise _BadBody("unknown_device", f"no device with nb_device_id or code {service.device_id!r}")
                payload, fmt = _payload(service, rx)
                meta = [("device_id", _meta_value(service.device_id)), ("format", fmt)]
                if service.service_id:
                    meta.append(("service", _meta_value(service.service_id)))
                messages.append(RawMessage(f"webhook/{platform}", payload, rx, Transport.WEBHOOK, code, tuple(meta)))
        except _BadBody as exc:
            return await reject(platform, body, exc.reason, exc.detail, rx)
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
