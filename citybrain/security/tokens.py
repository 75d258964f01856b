"""JWT bearer tokens (RFC 7519, JWS compact form, HS256 only), with key ids and rotation.

Implemented with :mod:`hmac`/:mod:`hashlib` instead of a JWT library: one
algorithm, fixed by the verifier (the header's ``alg`` must be ``HS256``, so
``none`` and algorithm-confusion tricks fail), keeps the attack surface small.

Keys live in the ``signing_keys`` table; a :class:`KeyRing` is a snapshot of
it. The newest key that is not retired signs. A retired key still verifies
the tokens it signed until they expire (``retired_at + max token lifetime``),
so a rotation never logs anybody out. Pure functions: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from citybrain.security.errors import TokenError

__all__ = [
    "ISSUER",
    "KeyRing",
    "SigningKey",
    "issue",
    "new_signing_key",
    "sign_jwt",
    "verify_jwt",
]

ISSUER = "citybrain"
_MAX_TOKEN_CHARS = 8192


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64d(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise TokenError("malformed", "segment is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise TokenError("malformed", "segment is not base64url") from None


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One HS256 key.

    Attributes:
        kid: Key id, carried in the token header.
        secret: At least 32 random bytes.
        created_at: When it was made.
        retired_at: When it stopped signing (``None``: may sign).
    """

    kid: str
    secret: bytes
    created_at: datetime
    retired_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.kid or len(self.kid) > 64:
            raise TokenError("bad_key", "kid must be 1..64 characters")
        if len(self.secret) < 32:
            raise TokenError("bad_key", "an HS256 secret needs at least 32 bytes")

    def __repr__(self) -> str:
        # Never print the secret (logs, tracebacks).
        return f"SigningKey(kid={self.kid!r}, created_at={self.created_at!r}, retired_at={self.retired_at!r})"


def new_signing_key(now: datetime | None = None) -> SigningKey:
    """A fresh 256-bit key with a random kid."""
    return SigningKey(secrets.token_hex(8), secrets.token_bytes(32), now or datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class KeyRing:
    """A snapshot of the signing keys.

    Attributes:
        keys: Every known key.
        max_ttl: The longest token lifetime; a retired key verifies this long after retiring.
    """

    keys: tuple[SigningKey, ...]
    max_ttl: timedelta = timedelta(hours=1)

    @classmethod
    def of(cls, keys: Iterable[SigningKey], max_ttl: timedelta = timedelta(hours=1)) -> KeyRing:
        """A ring from any iterable of keys."""
        return cls(tuple(keys), max_ttl)

    def current(self) -> SigningKey:
        """The key that signs: the newest one not retired.

        Raises:
            TokenError: ``no_key`` if every key is retired (rotate first).
        """
        live = [k for k in self.keys if k.retired_at is None]
        if not live:
            raise TokenError("no_key", "no active signing key; run `citybrain keys rotate`")
        return max(live, key=lambda k: k.created_at)

    def verifying(self, kid: str, now: datetime) -> SigningKey | None:
        """The key with this kid, if it may still verify at ``now``."""
        for key in self.keys:
            if hmac.compare_digest(key.kid.encode(), kid.encode()):
                if key.retired_at is None or now <= key.retired_at + self.max_ttl:
                    return key
                return None
        return None


def sign_jwt(claims: Mapping[str, Any], key: SigningKey) -> str:
    """Sign claims as a compact HS256 JWS with the key's ``kid`` in the header."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    head = _b64e(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    body = _b64e(json.dumps(dict(claims), separators=(",", ":"), sort_keys=True, allow_nan=False).encode())
    signing_input = f"{head}.{body}".encode("ascii")
    return f"{head}.{body}.{_b64e(hmac.new(key.secret, signing_input, hashlib.sha256).digest())}"


def issue(
    subject: str,
    ring: KeyRing,
    *,
    now: datetime,
    ttl: timedelta,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A token for ``subject`` valid for ``ttl`` (at most the ring's ``max_ttl``)."""
    if ttl > ring.max_ttl:
        raise TokenError("bad_ttl", f"ttl {ttl} exceeds the ring's max_ttl {ring.max_ttl}")
    iat = int(now.timestamp())
    claims = {
        **(extra or {}),
        "iss": ISSUER,
        "sub": subject,
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(ttl.total_seconds()),
        "jti": secrets.token_hex(8),
    }
    return sign_jwt(claims, ring.current())


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError("malformed", f"claim {name} missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError("malformed", f"claim {name} is not a number")
    return float(value)


def verify_jwt(
    token: str, ring: KeyRing, *, now: datetime, leeway: timedelta = timedelta(seconds=30)
) -> dict[str, Any]:
    """Check a token's form, signature, issuer and times; returns its claims.

    Args:
        token: The compact token (without ``Bearer``).
        ring: Keys that may verify.
        now: Current time (passed in so tests need no clock).
        leeway: Clock skew tolerated on ``exp``, ``nbf`` and ``iat``.

    Raises:
        TokenError: ``malformed``, ``bad_alg``, ``unknown_kid``, ``bad_signature``,
            ``bad_issuer``, ``expired`` or ``not_yet_valid``.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
        raise TokenError("malformed", "not a compact JWS")
    head_b64, body_b64, sig_b64 = token.split(".")
    try:
        header = json.loads(_b64d(head_b64))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed", "header is not JSON") from None
    if not isinstance(header, dict):
        raise TokenError("malformed", "header is not an object")
    if header.get("alg") != "HS256":
        raise TokenError("bad_alg", "only HS256 is accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("unknown_kid", "header has no kid")
    key = ring.verifying(kid, now)
    if key is None:
        raise TokenError("unknown_kid", f"kid {kid[:20]!r} unknown or retired")
    want = hmac.new(key.secret, f"{head_b64}.{body_b64}".encode("ascii"), hashlib.sha256).digest()
    # Signature before looking at the claims: nothing in an unsigned body is trusted.
    if not hmac.compare_digest(want, _b64d(sig_b64)):
        raise TokenError("bad_signature")
    try:
        claims = json.loads(_b64d(body_b64))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed", "claims are not JSON") from None
    if not isinstance(claims, dict):
        raise TokenError("malformed", "claims are not an object")
    if claims.get("iss") != ISSUER:
        raise TokenError("bad_issuer")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenError("malformed", "claim sub missing")
    t = now.timestamp()
    skew = leeway.total_seconds()
    exp = _number(claims, "exp", True)
    assert exp is not None
    if t > exp + skew:
        raise TokenError("expired")
    nbf = _number(claims, "nbf", False)
    if nbf is not None and t < nbf - skew:
        raise TokenError("not_yet_valid")
    iat = _number(claims, "iat", True)
    assert iat is not None
    if t < iat - skew:
        raise TokenError("not_yet_valid", "issued in the future")
    # A token may not outlive the ring's max_ttl, so a retired key's window is bounded.
    if exp - iat > ring.max_ttl.total_seconds() + skew:
        raise TokenError("malformed", "lifetime exceeds max_ttl")
    return claims
