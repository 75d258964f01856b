"""Per-device MQTT credentials: secrets, hashes, and Mosquitto's files.

* The MQTT username of a device is its 17-character code; the secret is random
  (:func:`new_secret`, 192 bits), shown once, and stored only as hashes.
* :func:`hash_secret` gives ``$scrypt$ln=12,r=8,p=1$<salt>$<hash>`` (the layout
  passlib uses; salt and hash in unpadded standard base64). The parameters are
  in the string, so they can be raised later without invalidating old hashes.
  The work factor is modest on purpose: the secrets are 192-bit random values
  that no dictionary or brute force reaches, so a slow KDF would only cost
  broker CPU during reconnect storms without adding security.
* :func:`mosquitto_hash` gives Mosquitto's ``$7$`` hash (PBKDF2-HMAC-SHA512):
  ``$7$<iterations>$<base64 12-byte salt>$<base64 64-byte hash>``, standard
  base64 with padding, as ``mosquitto_passwd`` writes it. A 12-byte salt is the
  one length every Mosquitto 2.x release reads. It is stored beside the scrypt
  hash because a password file can only be rendered from a hash Mosquitto
  understands, never from the scrypt one.
* :func:`render_password_file` and :func:`render_acl_file` write Mosquitto's
  ``password_file`` and ``acl_file``; service accounts get the topics of their
  role (:data:`SERVICE_ROLES`). App accounts (role ``app``, :func:`parse_app_user`)
  read only the downstream views of the data grades they are granted, optionally
  for some districts only (:func:`service_rights`).
* HJ 212 station passwords (the frame's ``PW``, at most 6 alphanumerics) are
  low-entropy by the standard's design, so they get their own, slower scrypt
  cost (:data:`STATION_PW_SCRYPT`) and their own column: a station PW must
  never be usable as an MQTT secret (:func:`hash_station_password`).

Pure functions; no I/O except what the caller passes in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from devices.errors import CredentialError
from devices.grades import GRADES

__all__ = [
    "SCRYPT_DEFAULT",
    "SERVICE_ROLES",
    "STATION_PW_SCRYPT",
    "ScryptParams",
    "ServiceUser",
    "check_station_password",
    "hash_secret",
    "hash_station_password",
    "mosquitto_hash",
    "new_secret",
    "new_station_password",
    "parse_app_user",
    "parse_service_user",
    "render_acl_file",
    "render_password_file",
    "service_rights",
    "verify_mosquitto",
    "verify_secret",
]

UPLINK_PATTERN = "citybrain/up/{user}/#"
#: Data grades, lowest first (the policy is :mod:`devices.grades`).
DATA_GRADES = GRADES
COMMAND_PATTERN = "citybrain/cmd/{user}"


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt cost: N = 2**ln, block size r, parallelism p."""

    ln: int = 12
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        # Bounds keep a forged hash string from asking for gigabytes of memory.
        if not (1 <= self.ln <= 20 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise CredentialError(f"scrypt parameters out of range: ln={self.ln} r={self.r} p={self.p}")


SCRYPT_DEFAULT = ScryptParams()
#: Station PWs: 6 characters at most, so 8x the work of the device secrets (about
#: 30 ms per check). The HJ 212 connector checks a PW once per connection and MN,
#: off the event loop, so the cost is paid at reconnects, not per frame.
STATION_PW_SCRYPT = ScryptParams(ln=13)
_STATION_PW_RE = re.compile(r"[0-9A-Za-z]{1,6}", re.ASCII)
_STATION_PW_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
_SALT_BYTES = 16
_KEY_BYTES = 32
MOSQUITTO_ITERATIONS = 1000  # mosquitto_passwd 2.1 default (2.0 used 101); any count verifies
_MOSQ_SALT_BYTES = 12
_SCRYPT_RE = re.compile(r"^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")
_MOSQ_RE = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$")


def new_secret() -> str:
    """A fresh device secret: 24 random bytes, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(secret: str, salt: bytes, params: ScryptParams) -> bytes:
    # maxmem: OpenSSL's default limit (32 MiB) is below 128 * r * N for ln=16+.
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=2**params.ln,
        r=params.r,
        p=params.p,
        dklen=_KEY_BYTES,
        maxmem=256 * 1024 * 1024,
    )


def hash_secret(secret: str, params: ScryptParams = SCRYPT_DEFAULT, *, salt: bytes | None = None) -> str:
    """Hash a secret with scrypt; the result carries its parameters and salt."""
    if not secret:
        raise CredentialError("an empty secret cannot be hashed")
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(secret, salt, params)
    return f"$scrypt$ln={params.ln},r={params.r},p={params.p}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Check a secret against a ``$scrypt$`` or ``$7$`` hash in constant time.

    A malformed hash verifies nothing (False); it never raises, because the
    broker calls this for every login and a bad row must not break the others.
    CPU-heavy: call it from a thread executor on an event loop.
    """
    if not secret or not encoded:
        return False
    if encoded.startswith("$7$"):
        return verify_mosquitto(secret, encoded)
    m = _SCRYPT_RE.match(encoded)
    if m is None:
        return False
    try:
        params = ScryptParams(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        salt, want = _unb64(m.group(4)), _unb64(m.group(5))
        got = _scrypt(secret, salt, params)
    except (CredentialError, ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


def mosquitto_hash(secret: str, *, iterations: int = MOSQUITTO_ITERATIONS, salt: bytes | None = None) -> str:
    """Mosquitto's ``$7$`` PBKDF2-HMAC-SHA512 hash, as ``mosquitto_passwd`` writes it."""
    if not secret:
        raise CredentialError("an empty secret cannot be hashed")
    if iterations < 1:
        raise CredentialError(f"iterations must be >= 1, got {iterations}")
    salt = salt if salt is not None else secrets.token_bytes(_MOSQ_SALT_BYTES)
    if len(salt) not in (12, 64):
        raise CredentialError("Mosquitto reads 12- or 64-byte salts only")
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_mosquitto(secret: str, encoded: str) -> bool:
    """Check a secret against a Mosquitto ``$7$`` hash (constant time)."""
    m = _MOSQ_RE.match(encoded or "")
    if m is None:
        return False
    try:
        iterations = int(m.group(1))
        salt = base64.b64decode(m.group(2), validate=True)
        want = base64.b64decode(m.group(3), validate=True)
    except (ValueError, binascii.Error):
        return False
    if not 1 <= iterations <= 10_000_000 or len(salt) not in (12, 64) or len(want) != 64:
        return False
    got = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(got, want)


def check_station_password(pw: str) -> str:
    """Return ``pw`` if it can stand in an HJ 212 frame's PW field (1-6 ASCII alphanumerics).

    Raises:
        CredentialError: it cannot.
    """
    if not _STATION_PW_RE.fullmatch(pw or ""):
        raise CredentialError("an HJ 212 PW is 1 to 6 letters or digits (HJ 212-2017 §6.3.2)")
    return pw


def new_station_password() -> str:
    """A fresh HJ 212 station PW: 6 random characters (no look-alikes such as 0/O, 1/l)."""
    return "".join(secrets.choice(_STATION_PW_ALPHABET) for _ in range(6))


def hash_station_password(pw: str, *, salt: bytes | None = None) -> str:
    """scrypt hash of a station PW, with :data:`STATION_PW_SCRYPT` (verify with :func:`verify_secret`)."""
    return hash_secret(check_station_password(pw), STATION_PW_SCRYPT, salt=salt)


#: Topic rights of service accounts in Mosquitto's ACL, per role (``{p}`` is the prefix).
#: ``all`` is the historical default (development, admin tools); production gives
#: each service only what it uses.
SERVICE_ROLES: dict[str, tuple[tuple[str, str], ...]] = {
    # every citybrain topic
    "all": (("readwrite", "{p}/#"),),
    # gateways and the edge's command dispatcher: read uplinks (data, status, command
    # answers), send commands, bridge readings and alerts downstream
    "gateway": (
        ("read", "{p}/up/#"),
        ("write", "{p}/cmd/#"),
        ("write", "{p}/down/#"),
        ("write", "{p}/alerts/#"),
        # the graded downstream views (internal, sensitive) that the bridge publishes
        ("write", "{p}/down-internal/#"),
        ("write", "{p}/down-sensitive/#"),
    ),
    # a downstream bridge or application: read the public readings view and alerts only
    "downstream": (("read", "{p}/down/#"), ("read", "{p}/alerts/#")),
    # an application granted some data grades (and districts): see service_rights()
    "app": (),
    # the simulators (development): publish for many devices, answer their commands
    "simulator": (("write", "{p}/up/#"), ("read", "{p}/cmd/#")),
}


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """A platform service account (gateway, bridge, simulator) with the topics of its role.

    The embedded broker lets every service account use every topic; the role
    shapes the Mosquitto ACL (:func:`render_acl_file`).
    """

    name: str
    secret: str
    role: str = "all"
    #: Role ``app`` only: the highest data grade it reads (``public``, ``internal``, ``sensitive``).
    grade: str = "public"
    #: Role ``app`` only: the districts it reads (empty: all).
    districts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in SERVICE_ROLES:
            roles = ", ".join(sorted(SERVICE_ROLES))
            raise CredentialError(f"service user {self.name}: unknown role {self.role!r} (one of {roles})")
        if self.grade not in DATA_GRADES:
            raise CredentialError(
                f"service user {self.name}: unknown grade {self.grade!r} (one of public, internal, sensitive)"
            )
        if self.role != "app" and (self.grade != "public" or self.districts):
            raise CredentialError(f"service user {self.name}: grades and districts are for role app only")
        for d in self.districts:
            if not re.fullmatch(r"[0-9]{6}", d):
                raise CredentialError(f"service user {self.name}: district {d!r} must be a 6-digit code")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", self.name):
            raise CredentialError(f"service user name {self.name!r} must be a letter then [A-Za-z0-9_.-]")
        if len(self.name) in (16, 17) and self.name[:16].isdigit():
            raise CredentialError("a service user name must not look like a device code")
        if len(self.secret) < 12:
            raise CredentialError(f"service user {self.name}: secret must have at least 12 characters")


def parse_service_user(text: str, role: str = "all") -> ServiceUser:
    """Parse ``NAME:SECRET`` (command-line form); the secret may itself hold colons."""
    name, sep, secret = text.partition(":")
    if not sep:
        raise CredentialError("service user must be NAME:SECRET")
    return ServiceUser(name, secret, role)


def parse_app_user(text: str) -> ServiceUser:
    """Parse ``NAME:GRADE[:DISTRICT,…]:SECRET`` (``--app-user``): an app reading downstream views.

    ``GRADE`` is the highest grade it may read; the optional district list (6-digit
    codes, comma-separated) narrows it to those districts. A secret holding colons
    needs the district list, empty for all (``NAME:GRADE::SECRET``), so that its
    first part is never read as districts.
    """
    parts = text.split(":", 2)
    if len(parts) < 3 or not parts[2]:
        raise CredentialError("app user must be NAME:GRADE[:DISTRICT,...]:SECRET")
    name, grade, rest = parts
    districts: tuple[str, ...] = ()
    head, sep, tail = rest.partition(":")
    if sep and (head == "" or re.fullmatch(r"[0-9]{6}(,[0-9]{6})*", head)):
        districts, secret = tuple(d for d in head.split(",") if d), tail
    else:
        secret = rest
    return ServiceUser(name, secret, "app", grade, districts)


def service_rights(user: ServiceUser, prefix: str = "citybrain") -> list[tuple[str, str]]:
    """The (access, topic) lines of a service account in Mosquitto's ACL.

    An ``app`` reads the downstream view of each grade up to its own (public:
    ``{p}/down/…``; internal adds ``{p}/down-internal/…``; sensitive adds
    ``{p}/down-sensitive/…``) and the alerts, for its districts or all of them.
    """
    if user.role != "app":
        return [(access, pattern.format(p=prefix)) for access, pattern in SERVICE_ROLES[user.role]]
    roots = ("down", "down-internal", "down-sensitive")[: DATA_GRADES.index(user.grade) + 1]
    districts = user.districts or ("#",)
    rights = []
    for root in roots:
        rights += [("read", f"{prefix}/{root}/{d}" + ("" if d == "#" else "/#")) for d in districts]
    rights += [("read", f"{prefix}/alerts/{d}" + ("" if d == "#" else "/#")) for d in districts]
    return rights


def render_password_file(entries: Iterable[tuple[str, str]]) -> str:
    """Mosquitto ``password_file`` text from (username, ``$7$`` hash) pairs."""
    lines = []
    for user, encoded in entries:
        if ":" in user or not _MOSQ_RE.match(encoded):
            raise CredentialError(f"user {user!r}: not a Mosquitto $7$ hash or a bad username")
        lines.append(f"{user}:{encoded}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_acl_file(service_users: Iterable[str | ServiceUser], *, prefix: str = "citybrain") -> str:
    """Mosquitto ``acl_file``: devices only under their own code; services by role.

    ``pattern`` lines apply to every client, with ``%u`` replaced by its
    username (the device code), so one file covers millions of devices.
    Mosquitto refuses ``%u`` substitution for usernames holding ``+``/``#``/``/``,
    and device codes are digits (and X) only. A bare name (str) gets role ``all``.
    Mosquitto applies the ``pattern`` lines to service users too; they only
    add topics under a service's own name, which no device code can equal.
    """
    out = [
        "# Rendered by `citybrain devices mosquitto-files`; do not edit by hand.",
        "# Devices (username = city device code): publish only under their own code,",
        "# subscribe only to their own command topic.",
        f"pattern write {prefix}/up/%u/#",
        f"pattern read {prefix}/cmd/%u",
        "",
    ]
    for user in service_users:
        if isinstance(user, str):
            name, role, rights = user, "all", [("readwrite", f"{prefix}/#")]
        else:
            name, role, rights = user.name, user.role, service_rights(user, prefix)
            if role == "app":
                districts = ",".join(user.districts) or "all districts"
                role = f"app, grade {user.grade}, {districts}"
        out += [f"# service account, role {role}", f"user {name}"]
        out += [f"topic {access} {topic}" for access, topic in rights]
        out.append("")
    return "\n".join(out)
