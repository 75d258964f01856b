"""The security package's exceptions: one base, specific subclasses."""

from __future__ import annotations

__all__ = ["AuditError", "AuthError", "IdentityError", "SecurityError", "TokenError"]


class SecurityError(Exception):
    """Base of every error raised by :mod:`citybrain.security`."""


class AuditError(SecurityError):
    """An audit entry could not be written (bad field, database refused it)."""


class IdentityError(SecurityError):
    """A user, service account, role, grant or API key is invalid or unknown."""


class AuthError(SecurityError):
    """A request could not be authenticated."""


class TokenError(AuthError):
    """A bearer token is malformed, forged, expired or signed with an unknown key.

    Attributes:
        reason: A short, stable, metric-label-safe reason (``malformed``, ``bad_signature`` …).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
