"""Security routes: the audit trail for auditors, browser sessions, and token issuance.

* ``GET /api/v1/audit`` (``audit:read``): entries newest first, filtered by
  ``actor``, ``action`` (``area.*`` for a whole area), ``since``/``until``;
  paged with ``before_seq`` (pass the ``next_before_seq`` of the last page).
* ``POST /api/v1/session`` ``{"username", "password"}``: sets the session
  cookie (``Secure; HttpOnly; SameSite=Strict``) and returns the principal and
  the CSRF token to send as ``X-CSRF-Token`` on unsafe requests. Failed logins
  are rate-limited per username and per address (429 with ``Retry-After``).
  Every attempt is written to the audit log; if it cannot be, the login is
  refused (503), because an unaudited login is worse than none.
* ``GET /api/v1/session``: 200 with the principal, or 401.
* ``DELETE /api/v1/session``: logs out (needs the CSRF token).
* ``POST /api/v1/token``: a short-lived JWT for a caller authenticated by API
  key or session (not by another JWT, so tokens cannot be renewed forever).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from citybrain.routes.context import ApiContext
from citybrain.security.audit import AuditEntry
from citybrain.security.auth import (
    SESSION_COOKIE,
    Security,
    check_csrf,
    client_ip,
    public,
    require,
)
from citybrain.security.errors import AuditError
from citybrain.security.identities import Principal, csrf_token

__all__ = ["LoginIn", "build"]

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"


class LoginIn(BaseModel):
    """Credentials for a password login."""

    username: str = Field(min_length=1, max_length=64, pattern=_NO_CONTROL)
    password: str = Field(min_length=1, max_length=1024)


def build(ctx: ApiContext, security: Security) -> APIRouter:
    """Routes under /api/v1/audit, /api/v1/session and /api/v1/token.

    Args:
        ctx: Shared API dependencies (unused beyond the pool already inside ``security``;
            kept for the ``build(ctx, …)`` shape of every route module).
        security: The app's security bundle (also passed to :func:`citybrain.security.auth.install`).
    """
    del ctx  # every dependency comes through ``security``
    router = APIRouter()
    audit = security.audit

    async def record(entry: AuditEntry) -> None:
        try:
            await audit.record_many([entry])
        except AuditError as exc:
            raise HTTPException(503, "audit log unavailable; refusing to proceed unaudited") from exc

    @router.get("/api/v1/audit", tags=["security"])
    async def list_audit(
        _: Annotated[Principal, Depends(require("audit:read"))],
        actor: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[str | None, Query(max_length=200)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_seq: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Audit entries, newest first."""
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(422, f"{name} needs a time zone")
        rows = await audit.query(
            actor=actor, action=action, since=since, until=until, before_seq=before_seq, limit=limit
        )
        return {
            "items": [r.as_json() for r in rows],
            "next_before_seq": rows[-1].seq if len(rows) == limit else None,
        }

    @router.post("/api/v1/session", tags=["security"], dependencies=[Depends(public("password login"))])
    async def login(body: LoginIn, request: Request, response: Response) -> dict[str, Any]:
        """Password login: sets the session cookie and returns the CSRF token."""
        ip = client_ip(request)
        blocked = security.limiter.blocked(body.username, ip)
        if blocked is not None:
            scope, retry_after = blocked
            security.metrics.throttled.labels(scope).inc()
            security.metrics.logins.labels("throttled").inc()
            await record(AuditEntry(body.username, "session.login", "", "throttled", ip, {"scope": scope}))
            raise HTTPException(
                429, "too many failed logins; try again later", headers={"Retry-After": str(math.ceil(retry_after))}
            )
        principal = await security.identities.check_password(body.username, body.password)
        if principal is None:
            security.limiter.failed(body.username, ip)
            security.metrics.logins.labels("bad_credentials").inc()
            await record(AuditEntry(body.username, "session.login", "", "failure", ip, {"reason": "bad_credentials"}))
            raise HTTPException(401, "wrong username or password")
        token = await security.identities.create_session(principal.user, security.config.session_ttl)
        security.metrics.logins.labels("ok").inc()
        await record(AuditEntry(principal.user, "session.login", "", "success", ip))
        max_age = int(security.config.session_ttl.total_seconds())
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=max_age,
            path="/",
            secure=security.config.cookie_secure,
            httponly=True,
            samesite="strict",
        )
        return {"principal": principal.as_json(), "csrf_token": csrf_token(token), "expires_in": max_age}

    @router.get(
        "/api/v1/session", tags=["security"], dependencies=[Depends(public("answers 401 itself when signed out"))]
    )
    async def whoami(request: Request) -> dict[str, Any]:
        """The caller's principal (any credential), or 401."""
        principal = await security.auth.authenticate(request)
        if principal is None:
            raise HTTPException(401, "not logged in", headers={"WWW-Authenticate": "Bearer"})
        out: dict[str, Any] = {"principal": principal.as_json()}
        if principal.via == "session" and principal.session_token:
            # A reloaded console needs its CSRF token again; only same-origin script can read this.
            out["csrf_token"] = csrf_token(principal.session_token)
        return out

    @router.delete(
        "/api/v1/session",
        tags=["security"],
        status_code=204,
        dependencies=[Depends(public("logout; needs its own session and CSRF token"))],
    )
    async def logout(request: Request) -> Response:
        """End the cookie session (needs ``X-CSRF-Token``)."""
        principal = await security.auth.authenticate(request)
        if principal is None or principal.via != "session" or principal.session_token is None:
            raise HTTPException(401, "no session", headers={"WWW-Authenticate": "Bearer"})
        check_csrf(request, principal)
        await security.identities.end_session(principal.session_token)
        await record(AuditEntry(principal.user, "session.logout", "", "success", client_ip(request)))
        out = Response(status_code=204)
        out.delete_cookie(
            SESSION_COOKIE, path="/", secure=security.config.cookie_secure, httponly=True, samesite="strict"
        )
        return out

    @router.post("/api/v1/token", tags=["security"])
    async def token(
        request: Request, principal: Annotated[Principal, Depends(require("tokens:issue"))]
    ) -> dict[str, Any]:
        """A bearer JWT for the caller (authenticated by API key or session)."""
        if principal.via == "jwt":
            raise HTTPException(403, "a token cannot be exchanged for a token; use an API key or a session")
        jwt = await security.auth.issue_token(principal)
        await record(
            AuditEntry(principal.user, "token.issue", "", "success", client_ip(request), {"via": principal.via})
        )
        return {
            "access_token": jwt,
            "token_type": "Bearer",
            "expires_in": int(security.config.token_ttl.total_seconds()),
        }

    return router
