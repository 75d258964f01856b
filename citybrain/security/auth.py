"""Request authentication and authorisation for the HTTP API.

:func:`require` is a FastAPI dependency factory::

    @router.get("/api/v1/devices", dependencies=[Depends(require("devices:read"))])

    async def handler(principal: Annotated[Principal, Depends(require("alerts:act"))]) -> ...

It authenticates the request with, in this order, ``Authorization: Bearer
<JWT>``, ``X-Api-Key: cbk_…`` or the session cookie, then checks the
permission against :data:`~citybrain.security.identities.PERMISSIONS`:
401 (with ``WWW-Authenticate: Bearer``) when nobody is authenticated, 403
when the principal lacks the permission. Cookie-authenticated unsafe methods
also need the session's CSRF token in ``X-CSRF-Token`` (:func:`check_csrf`);
bearer tokens and API keys are not sent by browsers on their own, so they
need none.

The :class:`Security` bundle is found on ``app.state.citybrain_security``,
put there by :func:`install`, so routes need no extra constructor argument.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from prometheus_client import CollectorRegistry, Counter
from psycopg_pool import AsyncConnectionPool

from citybrain.security.audit import AuditLog, printable, scrub
from citybrain.security.errors import SecurityError, TokenError
from citybrain.security.identities import IdentityStore, Principal, csrf_token, roles_with
from citybrain.security.ratelimit import LoginLimiter
from citybrain.security.tokens import KeyRing, issue, verify_jwt

__all__ = [
    "API_KEY_HEADER",
    "CSRF_HEADER",
    "PERMISSION_ATTR",
    "PUBLIC_ATTR",
    "SESSION_COOKIE",
    "Authenticator",
    "Security",
    "SecurityConfig",
    "SecurityMetrics",
    "check_csrf",
    "client_ip",
    "install",
    "public",
    "record",
    "require",
]

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-Api-Key"
CSRF_HEADER = "X-CSRF-Token"
SESSION_COOKIE = "citybrain_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_STATE_ATTR = "citybrain_security"
# Set on the dependency functions of require() and public(), so that the route table
# (citybrain.security.policy) can read every route's declared permission from the app.
PERMISSION_ATTR = "citybrain_permission"
PUBLIC_ATTR = "citybrain_public"


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Tunables of authentication.

    Attributes:
        token_ttl: Lifetime of issued JWTs (also the ring's ``max_ttl``).
        leeway: Clock skew tolerated when checking token times.
        session_ttl: Absolute lifetime of a browser session.
        cookie_secure: Set ``Secure`` on the session cookie (only tests over plain HTTP turn it off).
        key_refresh_s: How often the signing keys are re-read (a rotation elsewhere shows up this late).
    """

    token_ttl: timedelta = timedelta(hours=1)
    leeway: timedelta = timedelta(seconds=30)
    session_ttl: timedelta = timedelta(hours=8)
    cookie_secure: bool = True
    key_refresh_s: float = 60.0


class SecurityMetrics:
    """Counters of authentication, in the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.logins = Counter("citybrain_logins_total", "Password logins by result", ["result"], registry=registry)
        self.throttled = Counter(
            "citybrain_logins_throttled_total", "Logins refused by the rate limit", ["scope"], registry=registry
        )
        self.auth_failures = Counter(
            "citybrain_auth_failures_total", "Requests refused by authentication", ["reason"], registry=registry
        )


class Authenticator:
    """Turns request credentials into a :class:`Principal`.

    Args:
        identities: Where principals, keys and sessions live.
        config: Token and session settings.
        metrics: Failure counters.
        clock: Current UTC time (tests pass a fixed one).
        monotonic: Seconds for the key-ring refresh interval.
    """

    def __init__(
        self,
        identities: IdentityStore,
        config: SecurityConfig,
        metrics: SecurityMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.identities = identities
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._monotonic = monotonic or time.monotonic
        self._ring: KeyRing | None = None
        self._ring_at = 0.0

    async def ring(self, *, refresh: bool = False) -> KeyRing:
        """The signing keys, re-read at most every ``key_refresh_s`` unless ``refresh``."""
        now = self._monotonic()
        if refresh or self._ring is None or now - self._ring_at >= self.config.key_refresh_s:
            self._ring = await self.identities.signing_keys(self.config.token_ttl)
            self._ring_at = now
        return self._ring

    async def issue_token(self, principal: Principal) -> str:
        """A JWT for the principal, signed with the current key (one is created if none exists)."""
        ring = await self.ring()
        try:
            ring.current()
        except TokenError:
            await self.identities.ensure_signing_key()
            ring = await self.ring(refresh=True)
        return issue(principal.user, ring, now=self._clock(), ttl=self.config.token_ttl)

    async def from_jwt(self, token: str) -> Principal | None:
        """The principal named by a valid token (re-read, so disabling a user takes effect at once)."""
        ring = await self.ring()
        try:
            claims = verify_jwt(token, ring, now=self._clock(), leeway=self.config.leeway)
        except TokenError as exc:
            if exc.reason != "unknown_kid":
                self.metrics.auth_failures.labels(f"jwt_{exc.reason}").inc()
                return None
            # A key rotated in another process since our last read: look once more.
            try:
                claims = verify_jwt(token, await self.ring(refresh=True), now=self._clock(), leeway=self.config.leeway)
            except TokenError as again:
                self.metrics.auth_failures.labels(f"jwt_{again.reason}").inc()
                return None
        return await self.identities.get(str(claims["sub"]), via="jwt")

    async def authenticate(self, request: Request) -> Principal | None:
        """The principal of a request, or ``None``; the first credential present decides."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                self.metrics.auth_failures.labels("bad_authorization_header").inc()
                return None
            return await self.from_jwt(value.strip())
        key = request.headers.get(API_KEY_HEADER)
        if key is not None:
            found = await self.identities.check_api_key(key.strip())
            if found is None:
                self.metrics.auth_failures.labels("bad_api_key").inc()
            return found
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            found = await self.identities.check_session(cookie)
            if found is None:
                self.metrics.auth_failures.labels("bad_session").inc()
            return found
        return None


@dataclass(slots=True)
class Security:
    """Everything the security routes and :func:`require` need, built once per app.

    Attributes:
        audit: The audit log writer.
        identities: Principals, keys, sessions.
        auth: The authenticator.
        limiter: Failed-login rate limits.
        metrics: Counters.
        config: Settings.
    """

    audit: AuditLog
    identities: IdentityStore
    auth: Authenticator
    limiter: LoginLimiter
    metrics: SecurityMetrics
    config: SecurityConfig = field(default_factory=SecurityConfig)

    @classmethod
    def create(
        cls,
        pool: AsyncConnectionPool,
        registry: CollectorRegistry,
        config: SecurityConfig | None = None,
        *,
        identities: IdentityStore | None = None,
        limiter: LoginLimiter | None = None,
    ) -> Security:
        """Build the bundle (no I/O: the pool is opened by the app's lifespan)."""
        config = config or SecurityConfig()
        metrics = SecurityMetrics(registry)
        identities = identities or IdentityStore(pool)
        return cls(
            AuditLog(pool),
            identities,
            Authenticator(identities, config, metrics),
            limiter or LoginLimiter(),
            metrics,
            config,
        )


def install(app: FastAPI, security: Security) -> None:
    """Make :func:`require` work in this app."""
    setattr(app.state, _STATE_ATTR, security)


def security_of(request: Request) -> Security:
    """The app's :class:`Security` (a missing :func:`install` is a wiring bug, so it raises)."""
    found = getattr(request.app.state, _STATE_ATTR, None)
    if not isinstance(found, Security):
        raise RuntimeError("citybrain.security.install(app, security) was not called")
    return found


def client_ip(request: Request) -> str:
    """The peer address (proxies' X-Forwarded-For is not trusted here; docs/security.md)."""
    return request.client.host if request.client is not None else "0.0.0.0"


def _audit_ip(request: Request) -> str | None:
    # Test clients report names such as "testclient"; the audit log stores addresses only.
    host = client_ip(request)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host


async def record(
    request: Request,
    principal: Principal,
    action: str,
    resource: str = "",
    details: Mapping[str, Any] | None = None,
    *,
    outcome: str = "success",
) -> None:
    """Append an audit entry for a request, with the authenticated principal as actor.

    Called after a write succeeded (or a graded read was answered). A failing
    audit log is logged and counted, not raised: the change is already
    committed, and answering 5xx would make the client retry it.
    """
    security = security_of(request)
    try:
        # Resource and details often quote the request (its path, its filters): escaped and cut,
        # so that no input can keep an entry out of the log.
        await security.audit.record(
            principal.user, action, printable(resource), outcome, _audit_ip(request), scrub(dict(details or {}), 1000)
        )
    except SecurityError as exc:
        security.metrics.auth_failures.labels("audit_unavailable").inc()
        log.error("audit entry %s %s by %s not written: %s", action, resource, principal.user, exc)


def check_csrf(request: Request, principal: Principal) -> None:
    """Refuse an unsafe method on a cookie session without the matching ``X-CSRF-Token``.

    Raises:
        HTTPException: 403.
    """
    if principal.via != "session" or request.method in _SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    want = csrf_token(principal.session_token or "")
    if not sent or not hmac.compare_digest(sent.encode(), want.encode()):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER}")


def require(permission: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that authenticates the request and checks one permission.

    Args:
        permission: A key of :data:`~citybrain.security.identities.PERMISSIONS`.

    Raises:
        KeyError: At once, for an unknown permission (a typo fails at start-up).
    """
    allowed = roles_with(permission)

    async def dependency(request: Request) -> Principal:
        security = security_of(request)
        try:
            principal = await security.auth.authenticate(request)
        except SecurityError as exc:
            log.warning("authentication failed: %s", exc)
            principal = None
        if principal is None:
            raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
        if not principal.roles & allowed:
            security.metrics.auth_failures.labels("forbidden").inc()
            # Refusals are part of "who tried what": audited like the writes they prevent.
            await record(
                request,
                principal,
                "authz.deny",
                f"{request.method} {request.url.path}",
                {"permission": permission},
                outcome="denied",
            )
            raise HTTPException(403, f"{permission} needs one of the roles {', '.join(sorted(allowed))}")
        check_csrf(request, principal)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{permission.replace(':', '_')}"
    setattr(dependency, PERMISSION_ATTR, permission)
    return dependency


def public(reason: str) -> Callable[[], None]:
    """A no-op dependency that declares a route open to anonymous callers, and why.

    Every route carries either :func:`require` or this marker, so the route
    table (docs/security.md) is read from the app and a forgotten check is a
    failing test rather than an open endpoint.
    """

    def dependency() -> None:
        return None

    dependency.__name__ = "public"
    setattr(dependency, PUBLIC_ATTR, reason)
    return dependency
