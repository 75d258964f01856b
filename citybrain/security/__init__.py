"""Security and governance: audit log, identities, tokens, sessions, permissions,
district/class scoping, data grades and the endpoint × role table.

See docs/security.md for what is enforced today and what is pending.
"""

from __future__ import annotations

from citybrain.security.audit import AuditEntry, AuditLog, AuditRow, VerifyReport, verify, verify_async
from citybrain.security.auth import (
    Authenticator,
    Security,
    SecurityConfig,
    check_csrf,
    install,
    public,
    record,
    require,
)
from citybrain.security.errors import AuditError, AuthError, IdentityError, SecurityError, TokenError
from citybrain.security.identities import PERMISSIONS, ROLES, IdentityStore, NewPrincipal, Principal
from citybrain.security.policy import RouteRule, markdown_table, route_rules
from citybrain.security.ratelimit import BucketSpec, LoginLimiter
from citybrain.security.scope import Masker, Scope, can_read
from citybrain.security.tokens import KeyRing, SigningKey, sign_jwt, verify_jwt

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditRow",
    "AuthError",
    "Authenticator",
    "BucketSpec",
    "IdentityError",
    "IdentityStore",
    "KeyRing",
    "LoginLimiter",
    "Masker",
    "NewPrincipal",
    "Principal",
    "RouteRule",
    "Scope",
    "Security",
    "SecurityConfig",
    "SecurityError",
    "SigningKey",
    "TokenError",
    "VerifyReport",
    "can_read",
    "check_csrf",
    "install",
    "markdown_table",
    "public",
    "record",
    "require",
    "route_rules",
    "sign_jwt",
    "verify",
    "verify_async",
    "verify_jwt",
]
