"""Notification subscription routes: outbound webhooks per rule, severity and district.

``/api/v1/notifications/subscriptions`` (CRUD) and ``…/{id}/deliveries`` (the
delivery log with every attempt). Reads need ``notifications:read``, writes
``notifications:write``; writes are audited. Reads never show the secret nor the
target URL's query (WeCom's ``key`` and DingTalk's ``access_token`` are
credentials): ``secret_set`` says whether one is stored. A principal restricted to
districts sees and writes only subscriptions within them. The stream worker does
the sending (:mod:`alerts.notify`). A target URL whose host is, or resolves to, a
loopback, link-local, private, multicast or unspecified address is refused (422)
unless ``CITYBRAIN_NOTIFY_ALLOWED_HOSTS`` allows it (docs/security.md, SSRF).
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from alerts.notify import (
    FORMATS,
    NotificationMetrics,
    NotificationStore,
    NotifyError,
    Subscription,
    TargetPolicy,
    TargetRefused,
)
from citybrain.routes.context import ApiContext
from citybrain.security.auth import record, require
from citybrain.security.identities import Principal
from citybrain.security.scope import Scope
from core.records import RecordError, Severity

__all__ = ["SubscriptionIn", "SubscriptionPatch", "build", "checked_target", "masked_url"]

_Reader = Annotated[Principal, Depends(require("notifications:read"))]
_Writer = Annotated[Principal, Depends(require("notifications:write"))]
_SEVERITIES = "^(info|warning|major|critical)$"
_FORMATS = "^(" + "|".join(FORMATS) + ")$"


class SubscriptionIn(BaseModel):
    """A new notification subscription."""

    name: str = Field(min_length=1, max_length=100)
    url: str = Field(min_length=8, max_length=2000, description="Target URL (http or https)")
    rule_pattern: str = Field(default="*", min_length=1, max_length=200, description="Glob over rule ids: air.*")
    min_severity: str = Field(default="warning", pattern=_SEVERITIES)
    districts: list[str] = Field(default_factory=list, max_length=50, description="6-digit codes; empty: all")
    format: str = Field(default="json", pattern=_FORMATS, description="Body format: " + ", ".join(FORMATS))
    template: str = Field(default="", max_length=4000, description="string.Template text ($rule, $severity …)")
    secret: str = Field(default="", max_length=200, description="HMAC-SHA256 key (and DingTalk's SEC… secret)")
    enabled: bool = True


class SubscriptionPatch(BaseModel):
    """Fields to change; absent fields keep their value (so a masked secret is never written back)."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    url: str | None = Field(default=None, min_length=8, max_length=2000)
    rule_pattern: str | None = Field(default=None, min_length=1, max_length=200)
    min_severity: str | None = Field(default=None, pattern=_SEVERITIES)
    districts: list[str] | None = Field(default=None, max_length=50)
    format: str | None = Field(default=None, pattern=_FORMATS)
    template: str | None = Field(default=None, max_length=4000)
    secret: str | None = Field(default=None, max_length=200)
    enabled: bool | None = None


def masked_url(url: str) -> str:
    """The URL with every query value replaced by ``***`` (robot keys and tokens live there)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "url": masked_url(row["url"]),
        "rule_pattern": row["rule_pattern"],
        "min_severity": Severity(int(row["min_severity"])).label,
        "districts": list(row["districts"] or []),
        "format": row["format"],
        "template": row["template"],
        "secret_set": bool(row["secret"]),
        "enabled": row["enabled"],
        "created_by": row["created_by"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _visible(principal: Principal, districts: list[str]) -> bool:
    scope = Scope.of(principal)
    if not scope.districts:
        return True
    # A district-restricted principal owns only subscriptions limited to its districts.
    return bool(districts) and all(scope.allows_district(d) for d in districts)


def _build(sub_id: int, doc: dict[str, Any]) -> Subscription:
    try:
        return Subscription(
            id=sub_id,
            name=doc["name"],
            url=doc["url"],
            rule_pattern=doc["rule_pattern"],
            min_severity=Severity.parse(doc["min_severity"])
            if isinstance(doc["min_severity"], str)
            else Severity(int(doc["min_severity"])),
            districts=tuple(doc["districts"]),
            format=doc["format"],
            template=doc["template"],
            secret=doc["secret"],
            enabled=doc["enabled"],
        )
    except (NotifyError, RecordError) as exc:
        raise HTTPException(422, str(exc)) from exc


async def checked_target(targets: TargetPolicy, sub: Subscription) -> Subscription:
    """``sub`` if its URL may be a target (:class:`alerts.notify.TargetPolicy`); 422 with the reason if not.

    The host name is resolved now; one that does not resolve yet is accepted (the worker
    checks again at every send, where DNS may also have changed since).
    """
    try:
        await targets.check(sub.url, unresolved_ok=True)
    except (TargetRefused, NotifyError) as exc:
        raise HTTPException(422, str(exc)) from exc
    return sub


def build(ctx: ApiContext) -> APIRouter:
    """Routes under /api/v1/notifications."""
    router = APIRouter()
    store = NotificationStore(ctx.pool, NotificationMetrics(ctx.registry))

    async def owned(sub_id: int, principal: Principal) -> dict[str, Any]:
        row = await store.get_subscription(sub_id)
        if row is None or not _visible(principal, list(row["districts"] or [])):
            raise HTTPException(404, f"no subscription {sub_id}")
        return row

    def check_districts(principal: Principal, districts: list[str]) -> None:
        if not _visible(principal, districts):
            raise HTTPException(403, "districts must be set and within your grants")

    @router.get("/api/v1/notifications/subscriptions", tags=["notifications"])
    async def list_subscriptions(principal: _Reader) -> list[dict[str, Any]]:
        """Subscriptions visible to the caller (secrets and URL queries masked)."""
        rows = await store.list_subscriptions()
        return [_shown(r) for r in rows if _visible(principal, list(r["districts"] or []))]

    @router.post("/api/v1/notifications/subscriptions", tags=["notifications"], status_code=201)
    async def create_subscription(body: SubscriptionIn, request: Request, principal: _Writer) -> dict[str, Any]:
        """Create a subscription; the stream worker starts matching transitions within seconds."""
        check_districts(principal, body.districts)
        sub = await checked_target(ctx.notify_targets, _build(0, body.model_dump()))
        sub_id = await store.create_subscription(sub, principal.user)
        await record(
            request,
            principal,
            "notification.create",
            f"notification/{sub_id}",
            {"name": sub.name, "url": masked_url(sub.url), "rule": sub.rule_pattern, "format": sub.format},
        )
        row = await store.get_subscription(sub_id)
        assert row is not None
        return _shown(row)

    @router.get("/api/v1/notifications/subscriptions/{sub_id}", tags=["notifications"])
    async def get_subscription(sub_id: int, principal: _Reader) -> dict[str, Any]:
        """One subscription (masked)."""
        return _shown(await owned(sub_id, principal))

    @router.patch("/api/v1/notifications/subscriptions/{sub_id}", tags=["notifications"])
    async def update_subscription(
        sub_id: int, body: SubscriptionPatch, request: Request, principal: _Writer
    ) -> dict[str, Any]:
        """Change some fields; absent ones (a secret not re-entered) keep their value."""
        row = await owned(sub_id, principal)
        changes = body.model_dump(exclude_none=True)
        doc = {**row, **changes}
        check_districts(principal, list(doc["districts"]))
        await store.update_subscription(await checked_target(ctx.notify_targets, _build(sub_id, doc)))
        await record(
            request,
            principal,
            "notification.update",
            f"notification/{sub_id}",
            {"fields": sorted(changes), **({"url": masked_url(changes["url"])} if "url" in changes else {})},
        )
        return _shown(await owned(sub_id, principal))

    @router.delete("/api/v1/notifications/subscriptions/{sub_id}", tags=["notifications"], status_code=204)
    async def delete_subscription(sub_id: int, request: Request, principal: _Writer) -> None:
        """Delete a subscription with its delivery log."""
        row = await owned(sub_id, principal)
        await store.delete_subscription(sub_id)
        await record(request, principal, "notification.delete", f"notification/{sub_id}", {"name": row["name"]})

    @router.get("/api/v1/notifications/subscriptions/{sub_id}/deliveries", tags=["notifications"])
    async def deliveries(
        sub_id: int, principal: _Reader, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[dict[str, Any]]:
        """The latest deliveries, newest first, each with its attempts (status, HTTP code, error)."""
        await owned(sub_id, principal)
        out = []
        for d in await store.deliveries(sub_id, limit):
            attempts = d.pop("attempt_log")
            out.append(
                {
                    **d,
                    "created_at": d["created_at"].isoformat(),
                    "delivered_at": d["delivered_at"].isoformat() if d["delivered_at"] else None,
                    "attempts_log": attempts,
                }
            )
        return out

    return router
