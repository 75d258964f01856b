"""JWT bearer tokens (RFC 7519, JWS compact form, HS256 only), with key ids and rotation.

Signing, signature checks and the encoding are PyJWT's. One algorithm, fixed
by the verifier: the header's ``alg`` must be ``HS256`` and PyJWT is told to
accept nothing else, so ``none`` and algorithm-confusion tricks fail. The
times (``exp``, ``nbf``, ``iat``) and the issuer are checked here rather than by
PyJWT, against the ``now`` the caller passes (PyJWT reads the system clock),
and every refusal is a :class:`~citybrain.security.errors.TokenError` with a
stable, metric-label-safe reason.

Keys live in the ``signing_keys`` table; a :class:`KeyRing` is a snapshot of
it. The newest key that is not retired signs. A retired key still verifies
the tokens it signed until they expire (``retired_at + max token lifetime``),
so a rotation never logs anybody out. Pure functions: no I/O.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt

from citybrain.security.errors import TokenError

if TYPE_CHECKING:
    from jwt.types import Options

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
_ALG = "HS256"
# PyJWT checks the signature and the form; claims and times are checked below, against the caller's clock.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


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
    return jwt.encode(dict(claims), key.secret, algorithm=_ALG, headers={"kid": key.kid})


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
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenError("malformed", "header is not a JSON object in base64url") from None
    if header.get("alg") != _ALG:
        raise TokenError("bad_alg", "only HS256 is accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("unknown_kid", "header has no kid")
    key = ring.verifying(kid, now)
    if key is None:
        raise TokenError("unknown_kid", f"kid {kid[:20]!r} unknown or retired")
    try:
        # The signature is checked before the claims are parsed: nothing in an unsigned body is trusted.
        claims = jwt.decode(token, key.secret, algorithms=[_ALG], options=_SIGNATURE_ONLY)
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError("bad_alg", "only HS256 is accepted") from None
    except jwt.InvalidTokenError:
        raise TokenError("malformed", "claims are not a JSON object in base64url") from None
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
