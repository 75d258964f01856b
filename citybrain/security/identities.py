"""Users and service accounts, roles and grants, passwords, API keys, sessions, signing keys.

* Roles: ``admin``, ``integrator``, ``operator``, ``app``, ``auditor``.
  :data:`PERMISSIONS` maps each endpoint permission to the roles that hold it
  (data, not code: the role × endpoint table in docs/security.md is this dict).
* Grants narrow what a principal sees: districts (6-digit codes), device
  classes and topics. Empty means "no restriction"; the routes enforce them
  through :mod:`citybrain.security.scope`.
* Passwords: scrypt via :func:`devices.credentials.hash_secret`, with a higher
  cost than device secrets because people choose guessable passwords.
* API keys: ``cbk_<prefix>_<secret>``; the prefix (public) finds the row, the
  secret is stored as SHA-256 only. A fast hash is enough for a 192-bit random
  secret (no dictionary reaches it) and keeps per-request cost negligible.
* Sessions: a random cookie value, stored as SHA-256, with an absolute expiry.

:class:`IdentityStore` is the PostgreSQL side; pools are passed in.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from citybrain.security.errors import IdentityError
from citybrain.security.tokens import KeyRing, SigningKey, new_signing_key
from devices.credentials import ScryptParams, hash_secret, verify_secret

__all__ = [
    "PASSWORD_SCRYPT",
    "PERMISSIONS",
    "ROLES",
    "IdentityStore",
    "IssuedKey",
    "NewPrincipal",
    "Principal",
    "csrf_token",
    "new_password",
    "roles_with",
]

ROLES = ("admin", "integrator", "operator", "app", "auditor")

_ALL = frozenset(ROLES)
_READERS = frozenset({"admin", "integrator", "operator", "app", "auditor"})

PERMISSIONS: Mapping[str, frozenset[str]] = {
    "devices:read": _READERS,
    "devices:write": frozenset({"admin", "integrator"}),
    "readings:read": _READERS,
    "alerts:read": _READERS,
    "alerts:act": frozenset({"admin", "operator"}),
    "commands:send": frozenset({"admin", "operator"}),
    "geo:read": _READERS,
    "geo:write": frozenset({"admin", "integrator"}),
    "rules:write": frozenset({"admin", "integrator"}),
    # Raw payloads are not masked by grade: the debug view is for the people who wire devices.
    "devices:debug": frozenset({"admin", "integrator"}),
    "notifications:read": frozenset({"admin", "integrator", "operator", "auditor"}),
    "notifications:write": frozenset({"admin", "operator"}),
    "audit:read": frozenset({"admin", "auditor"}),
    "users:manage": frozenset({"admin"}),
    "tokens:issue": _ALL,
    # Data grades (citybrain.security.grades): who sees fields graded internal / sensitive
    # unmasked. Downstream apps get public data only; people's contacts and the exact
    # places of gas and power manholes are for admins, and every such read is audited.
    "internal:read": frozenset({"admin", "integrator", "operator", "auditor"}),
    "sensitive:read": frozenset({"admin"}),
}

# Human passwords get ~2**15 scrypt (32 MiB, ~0.1 s): guessable inputs need a slow KDF.
PASSWORD_SCRYPT = ScryptParams(ln=15, r=8, p=1)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.@-]{0,63}$")
_DISTRICT_RE = re.compile(r"^\d{6}$")
_CLASS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,19}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_./+#-]{1,200}$")
_KEY_RE = re.compile(r"^cbk_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{32})$")
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_MIN_PASSWORD = 12


@functools.cache
def _dummy_hash(params: ScryptParams) -> str:
    # Verified against unknown names so that a miss costs as long as a hit (no user
    # enumeration); computed on first use, not at import.
    return hash_secret("not-a-real-password", params, salt=b"citybrain-dummy!")


def roles_with(permission: str) -> frozenset[str]:
    """Roles that hold a permission.

    Raises:
        KeyError: Unknown permission (a typo in a route fails at start-up, not per request).
    """
    return PERMISSIONS[permission]


def new_password() -> str:
    """A generated password: 18 random bytes, URL-safe (24 characters)."""
    return secrets.token_urlsafe(18)


def csrf_token(session_token: str) -> str:
    """The CSRF token bound to a session: HMAC of a fixed label keyed by the cookie value.

    Stateless: it is recomputed from the cookie, so nothing more is stored, and
    a page from another origin cannot compute it (it cannot read the cookie).
    """
    return hmac.new(session_token.encode(), b"citybrain-csrf-v1", hashlib.sha256).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as.

    Attributes:
        user: Name of the user or service account.
        roles: Its roles.
        districts: Districts it may see (empty: all).
        classes: Device classes it may see (empty: all).
        topics: Topic patterns it may use (empty: all).
        kind: ``user`` or ``service``.
        via: How it authenticated: ``jwt``, ``api_key`` or ``session``.
        session_token: The session cookie value (``via == "session"`` only), for CSRF checks.
    """

    user: str
    roles: frozenset[str]
    districts: frozenset[str] = frozenset()
    classes: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    kind: str = "user"
    via: str = ""
    session_token: str | None = None

    def can(self, permission: str) -> bool:
        """Whether any of its roles holds the permission."""
        return bool(self.roles & roles_with(permission))

    def as_json(self) -> dict[str, Any]:
        """Public view (no session token)."""
        return {
            "user": self.user,
            "kind": self.kind,
            "roles": sorted(self.roles),
            "districts": sorted(self.districts),
            "classes": sorted(self.classes),
            "topics": sorted(self.topics),
            "via": self.via,
        }

    def __repr__(self) -> str:
        return f"Principal(user={self.user!r}, roles={sorted(self.roles)}, via={self.via!r})"


@dataclass(frozen=True, slots=True)
class NewPrincipal:
    """A user or service account to create; validated on construction."""

    name: str
    roles: tuple[str, ...]
    kind: str = "user"
    districts: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise IdentityError(f"name {self.name[:70]!r} must be a letter then up to 63 of [A-Za-z0-9_.@-]")
        if self.kind not in ("user", "service"):
            raise IdentityError(f"kind must be user or service, not {self.kind!r}")
        if not self.roles:
            raise IdentityError("at least one role is needed")
        for role in self.roles:
            if role not in ROLES:
                raise IdentityError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        for d in self.districts:
            if not _DISTRICT_RE.match(d):
                raise IdentityError(f"district {d!r} is not a 6-digit code")
        for c in self.classes:
            if not _CLASS_RE.match(c):
                raise IdentityError(f"device class {c!r} is not a class name")
        for t in self.topics:
            if not _TOPIC_RE.match(t):
                raise IdentityError(f"topic {t!r} is not a topic pattern")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new API key: ``key`` is shown once and never stored."""

    prefix: str
    key: str


def _principal(row: tuple[Any, ...], via: str, session_token: str | None = None) -> Principal:
    name, kind, roles, districts, classes, topics = row[:6]
    return Principal(
        name,
        frozenset(roles),
        frozenset(districts),
        frozenset(classes),
        frozenset(topics),
        kind,
        via,
        session_token,
    )


class IdentityStore:
    """Identities in PostgreSQL (migration 0601).

    Args:
        pool: The API's pool (opened by the caller).
        password_params: scrypt cost for new passwords (tests pass a cheaper one).
    """

    def __init__(self, pool: AsyncConnectionPool, *, password_params: ScryptParams = PASSWORD_SCRYPT) -> None:
        self._pool = pool
        self._params = password_params

    # --- principals ----------------------------------------------------------

    async def create(self, new: NewPrincipal, password: str | None = None) -> None:
        """Create a principal, with a password if given (users log in with it).

        Raises:
            IdentityError: The name is taken, or the password is too short.
        """
        encoded = None
        if password is not None:
            if len(password) < _MIN_PASSWORD:
                raise IdentityError(f"a password needs at least {_MIN_PASSWORD} characters")
            encoded = await asyncio.to_thread(hash_secret, password, self._params)
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "insert into principals (name, kind, roles, districts, device_classes, topics, password_hash)"
                    " values (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        new.name,
                        new.kind,
                        list(new.roles),
                        list(new.districts),
                        list(new.classes),
                        list(new.topics),
                        encoded,
                    ),
                )
        except psycopg.errors.UniqueViolation:
            raise IdentityError(f"{new.name!r} exists already") from None

    async def get(self, name: str, *, via: str = "") -> Principal | None:
        """An enabled principal by name."""
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "select p.name, p.kind, p.roles, p.districts, p.device_classes, p.topics"
                    " from principals p where p.name = %s and not p.disabled",
                    (name,),
                )
            ).fetchone()
        return None if row is None else _principal(row, via)

    async def set_disabled(self, name: str, disabled: bool) -> bool:
        """Disable (or re-enable) a principal; its keys and sessions stop working at once."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("update principals set disabled = %s where name = %s", (disabled, name))
            return cur.rowcount == 1

    async def check_password(self, name: str, password: str) -> Principal | None:
        """The principal if the password matches, else ``None`` (same cost either way)."""
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "select p.name, p.kind, p.roles, p.districts, p.device_classes, p.topics"
                    ", p.password_hash from principals p where p.name = %s and not p.disabled",
                    (name,),
                )
            ).fetchone()
        encoded = row[6] if row is not None and row[6] else _dummy_hash(self._params)
        ok = await asyncio.to_thread(verify_secret, password, encoded)
        if row is None or not row[6] or not ok:
            return None
        return _principal(row, "session")

    # --- API keys --------------------------------------------------------------

    async def create_api_key(self, name: str, *, label: str = "", expires_at: datetime | None = None) -> IssuedKey:
        """A new API key for a principal; the returned ``key`` is the only copy."""
        prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
        secret = secrets.token_urlsafe(24)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "insert into api_keys (prefix, principal_id, key_hash, label, expires_at)"
                " select %s, id, %s, %s, %s from principals where name = %s",
                (prefix, _sha256(secret), label[:200], expires_at, name),
            )
            if cur.rowcount != 1:
                raise IdentityError(f"no principal {name!r}")
        return IssuedKey(prefix, f"cbk_{prefix}_{secret}")

    async def revoke_api_key(self, prefix: str) -> bool:
        """Revoke a key by prefix; ``False`` if unknown or already revoked."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "update api_keys set revoked_at = now() where prefix = %s and revoked_at is null", (prefix,)
            )
            return cur.rowcount == 1

    async def check_api_key(self, key: str, now: datetime | None = None) -> Principal | None:
        """The principal owning a live key, or ``None``."""
        m = _KEY_RE.match(key)
        if m is None:
            return None
        prefix, secret = m.group(1), m.group(2)
        when = now or datetime.now(UTC)
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "select p.name, p.kind, p.roles, p.districts, p.device_classes, p.topics"
                    ", k.key_hash from api_keys k join principals p on p.id = k.principal_id"
                    " where k.prefix = %s and k.revoked_at is null and (k.expires_at is null or k.expires_at > %s)"
                    " and not p.disabled",
                    (prefix, when),
                )
            ).fetchone()
            if row is None or not hmac.compare_digest(str(row[6]), _sha256(secret)):
                return None
            # Coarse last-use stamp: at most one write a minute per key.
            await conn.execute(
                "update api_keys set last_used_at = %s where prefix = %s"
                " and (last_used_at is null or last_used_at < %s)",
                (when, prefix, when - timedelta(minutes=1)),
            )
        return _principal(row, "api_key")

    # --- sessions ----------------------------------------------------------------

    async def create_session(self, name: str, ttl: timedelta) -> str:
        """A new session for a principal; returns the cookie value (stored hashed)."""
        token = secrets.token_urlsafe(32)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "insert into sessions (token_hash, principal_id, expires_at)"
                " select %s, id, now() + %s from principals where name = %s and not disabled",
                (_sha256(token), ttl, name),
            )
            if cur.rowcount != 1:
                raise IdentityError(f"no enabled principal {name!r}")
        return token

    async def check_session(self, token: str) -> Principal | None:
        """The principal of a live session, or ``None``."""
        if not token or len(token) > 200:
            return None
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "select p.name, p.kind, p.roles, p.districts, p.device_classes, p.topics"
                    " from sessions s join principals p on p.id = s.principal_id"
                    " where s.token_hash = %s and s.revoked_at is null and s.expires_at > now() and not p.disabled",
                    (_sha256(token),),
                )
            ).fetchone()
        return None if row is None else _principal(row, "session", token)

    async def end_session(self, token: str) -> None:
        """Revoke a session (logout)."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "update sessions set revoked_at = now() where token_hash = %s and revoked_at is null",
                (_sha256(token),),
            )

    # --- signing keys ------------------------------------------------------------

    async def signing_keys(self, max_ttl: timedelta) -> KeyRing:
        """The key ring as stored now."""
        async with self._pool.connection() as conn:
            rows = await (
                await conn.execute("select kid, secret, created_at, retired_at from signing_keys order by created_at")
            ).fetchall()
        return KeyRing.of((SigningKey(r[0], bytes(r[1]), r[2], r[3]) for r in rows), max_ttl)

    async def rotate_signing_key(self, *, keep: timedelta = timedelta(days=2)) -> SigningKey:
        """Add a new signing key and retire the others; drop keys retired longer than ``keep``.

        ``keep`` must exceed the longest token lifetime, so that every token a
        retired key signed can still be verified until it expires.
        """
        key = new_signing_key()
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("lock table signing_keys in share row exclusive mode")
            await conn.execute("update signing_keys set retired_at = now() where retired_at is null")
            await conn.execute("delete from signing_keys where retired_at < now() - %s", (keep,))
            await conn.execute(
                "insert into signing_keys (kid, secret, created_at) values (%s, %s, %s)",
                (key.kid, key.secret, key.created_at),
            )
        return key

    async def ensure_signing_key(self) -> None:
        """Create a first signing key if there is none (idempotent, safe with several APIs starting)."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("lock table signing_keys in share row exclusive mode")
            row = await (await conn.execute("select 1 from signing_keys where retired_at is null limit 1")).fetchone()
            if row is None:
                key = new_signing_key()
                await conn.execute(
                    "insert into signing_keys (kid, secret, created_at) values (%s, %s, %s)",
                    (key.kid, key.secret, key.created_at),
                )


def grants_of(values: Iterable[str]) -> tuple[str, ...]:
    """Split comma-separated command-line values into a de-duplicated tuple."""
    out: list[str] = []
    for value in values:
        for raw in value.split(","):
            part = raw.strip()
            if part and part not in out:
                out.append(part)
    return tuple(out)
