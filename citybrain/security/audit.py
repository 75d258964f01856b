"""Append-only, hash-chained audit log in PostgreSQL (table ``audit_log``, migration 0600).

Every entry says who (``actor``) did what (``action``) to which ``resource``,
when (``at``, UTC), from where (``ip``), with which ``outcome`` and free-form
``details`` (a JSON object). Rows are chained: ``prev_hash`` is the previous
row's ``hash`` (64 zeros for the first) and ``hash`` is SHA-256 over
:func:`canonical` of the row's fields and ``prev_hash``. Writers serialise on
the one row of ``audit_chain_head`` (``select … for update``), so concurrent
writers never fork the chain and ``seq`` has no gaps.

Triggers refuse UPDATE, DELETE and TRUNCATE, but a superuser can disable
them: :func:`verify` recomputes the chain and names the first row that does
not match, so an edit, a deletion or a re-ordering is detected even then. It
does not detect a rewrite of the *whole* tail by someone who recomputes every
later hash; anchoring the head hash elsewhere (docs/security.md) covers that.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citybrain.security.errors import AuditError

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditLog",
    "AuditRow",
    "VerifyReport",
    "canonical",
    "check_chain",
    "printable",
    "row_hash",
    "scrub",
    "verify",
    "verify_async",
]

GENESIS_HASH = "0" * 64
_MAX_TEXT = 200
_MAX_DETAILS_BYTES = 16_384
_OUTCOMES = frozenset({"success", "failure", "denied", "throttled", "error"})
_FIELDS = ("seq", "at", "actor", "action", "resource", "outcome", "ip", "details", "prev_hash", "hash")
_COLUMNS = sql.SQL(", ").join(sql.Identifier(f) for f in _FIELDS)
_SELECT_ALL = sql.SQL("select {} from audit_log order by seq").format(_COLUMNS)
_INSERT = sql.SQL("insert into audit_log ({}) values ({})").format(
    _COLUMNS, sql.SQL(", ").join(sql.Placeholder() * len(_FIELDS))
)


def _json_text(value: Any) -> str:
    # sort_keys + fixed separators: the same object always gives the same bytes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise AuditError("details must not hold NaN or infinity")
    if isinstance(value, dict):
        for v in value.values():
            _check_finite(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_finite(v)


_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def printable(text: str, limit: int = _MAX_TEXT) -> str:
    """``text`` made fit for an audit field: control characters (NUL included) and lone
    surrogates escaped as ``\\xNN`` / ``\\uNNNN``, and cut to ``limit`` characters (``…`` marks a cut).

    Request-derived text (a path, a filter) goes through this, so that a refusal is
    recorded whatever the caller sent, and a log reader sees no terminal escapes.
    """
    escaped = _CONTROL.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def scrub(value: Any, limit: int = _MAX_TEXT) -> Any:
    """:func:`printable` applied to every string (and key) of a JSON-like value."""
    if isinstance(value, str):
        return printable(value, limit)
    if isinstance(value, Mapping):
        return {printable(str(k), limit): scrub(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, limit) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One thing to record, validated on construction.

    Attributes:
        actor: Who: a user or service name, ``device:<code>``, ``anonymous`` …
        action: What, as ``area.verb`` (``session.login``, ``alert.ack``).
        resource: What it was done to (``alert/42``); empty if nothing specific.
        outcome: ``success``, ``failure``, ``denied``, ``throttled`` or ``error``.
        ip: Client address (normalised), or ``None``.
        details: A JSON object with anything else worth keeping (no secrets).
    """

    actor: str
    action: str
    resource: str = ""
    outcome: str = "success"
    ip: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("actor", "action", "resource"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > _MAX_TEXT or "\x00" in value:
                raise AuditError(f"{name} must be a string of at most {_MAX_TEXT} characters without NUL")
        if not self.actor or not self.action:
            raise AuditError("actor and action must not be empty")
        if self.outcome not in _OUTCOMES:
            raise AuditError(f"outcome {self.outcome!r} is not one of {sorted(_OUTCOMES)}")
        if self.ip is not None:
            try:
                # Normalised so that the same address always hashes the same.
                object.__setattr__(self, "ip", str(ipaddress.ip_address(self.ip)))
            except ValueError:
                raise AuditError(f"ip {self.ip[:60]!r} is not an IP address") from None
        if not isinstance(self.details, Mapping):
            raise AuditError("details must be a JSON object")
        _check_finite(self.details)
        try:
            text = _json_text(dict(self.details))
        except (TypeError, ValueError) as exc:
            raise AuditError(f"details are not JSON: {exc}") from None
        if "\\u0000" in text:
            raise AuditError("details must not contain NUL characters (jsonb refuses them)")
        if len(text.encode("utf-8", "surrogatepass")) > _MAX_DETAILS_BYTES:
            raise AuditError(f"details larger than {_MAX_DETAILS_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A stored entry, as read back."""

    seq: int
    at: datetime
    actor: str
    action: str
    resource: str
    outcome: str
    ip: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON-ready dict (``at`` in ISO 8601, UTC)."""
        return {
            "seq": self.seq,
            "at": self.at.astimezone(UTC).isoformat(),
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "ip": self.ip,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    resource: str,
    outcome: str,
    ip: str | None,
    details: Mapping[str, Any],
    prev_hash: str,
) -> bytes:
    """The bytes a row's hash covers: a JSON array of its fields, in a fixed order.

    ``at`` is rendered in UTC with microseconds (PostgreSQL's precision), so the
    value read back from a ``timestamptz`` renders the same as the one written.
    """
    when = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return _json_text([seq, when, actor, action, resource, outcome, ip, dict(details), prev_hash]).encode(
        "utf-8", "surrogatepass"
    )


def row_hash(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    resource: str,
    outcome: str,
    ip: str | None,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of :func:`canonical`."""
    return hashlib.sha256(canonical(seq, at, actor, action, resource, outcome, ip, details, prev_hash)).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        ok: The whole chain checks out.
        rows: Rows checked (up to and including the first bad one).
        first_bad_seq: ``seq`` of the first row that does not match, or ``None``.
        reason: Why that row is bad (``hash_mismatch``, ``prev_hash_mismatch``,
            ``seq_gap``, ``head_mismatch``), or ``""``.
        head_hash: The hash of the last good row (what to anchor elsewhere).
    """

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_hash: str = GENESIS_HASH

    def describe(self) -> str:
        """One line for people."""
        if self.ok:
            return f"OK: {self.rows} audit rows, chain intact, head {self.head_hash}"
        return f"BROKEN at seq {self.first_bad_seq}: {self.reason} ({self.rows} rows checked)"


def check_chain(rows: Iterable[AuditRow], head: tuple[int, str] | None = None) -> VerifyReport:
    """Walk rows in ``seq`` order and report the first one that breaks the chain.

    Args:
        rows: Every row, ordered by ``seq``.
        head: ``(seq, hash)`` of ``audit_chain_head``; catches rows cut off the tail.
    """
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    for row in rows:
        count += 1
        if row.seq != expected_seq:
            # A missing seq means a deleted row; report where the gap starts.
            return VerifyReport(False, count, expected_seq, "seq_gap", prev)
        if row.prev_hash != prev:
            return VerifyReport(False, count, row.seq, "prev_hash_mismatch", prev)
        got = row_hash(
            row.seq, row.at, row.actor, row.action, row.resource, row.outcome, row.ip, row.details, row.prev_hash
        )
        if got != row.hash:
            return VerifyReport(False, count, row.seq, "hash_mismatch", prev)
        prev = row.hash
        expected_seq += 1
    if head is not None and (head[0] != expected_seq - 1 or head[1] != prev):
        return VerifyReport(False, count, expected_seq, "head_mismatch", prev)
    return VerifyReport(True, count, None, "", prev)


def _row(values: tuple[Any, ...]) -> AuditRow:
    return AuditRow(*values)


def verify(conn: psycopg.Connection, *, batch: int = 5000) -> VerifyReport:
    """Recompute the whole chain with a server-side cursor (constant memory).

    Args:
        conn: A synchronous connection; read in one repeatable-read snapshot so
            concurrent writers do not make the head look ahead of the rows.
        batch: Rows fetched per round trip.
    """
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read")
        head = conn.execute("select seq, hash from audit_chain_head").fetchone()
        with conn.cursor(name="audit_verify") as cur:
            cur.itersize = batch
            cur.execute(_SELECT_ALL)

            def rows() -> Iterator[AuditRow]:
                for values in cur:
                    yield _row(values)

            return check_chain(rows(), (int(head[0]), str(head[1])) if head else None)


async def verify_async(conn: psycopg.AsyncConnection, *, batch: int = 5000) -> VerifyReport:
    """:func:`verify` for an async connection (materialises rows in batches)."""
    async with conn.transaction():
        await conn.execute("set transaction isolation level repeatable read")
        head = await (await conn.execute("select seq, hash from audit_chain_head")).fetchone()
        out: list[AuditRow] = []
        async with conn.cursor(name="audit_verify") as cur:
            cur.itersize = batch
            await cur.execute(_SELECT_ALL)
            async for values in cur:
                out.append(_row(values))
        return check_chain(out, (int(head[0]), str(head[1])) if head else None)


class AuditLog:
    """Async writer and reader of the audit log.

    Args:
        pool: An open (or soon opened) pool; this class never opens or closes it.
    """

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(
        self,
        actor: str,
        action: str,
        resource: str = "",
        outcome: str = "success",
        ip: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRow:
        """Append one entry; returns the stored row (with its ``seq`` and ``hash``).

        Raises:
            AuditError: A field is invalid, or the database refused the row.
        """
        rows = await self.record_many([AuditEntry(actor, action, resource, outcome, ip, details or {})])
        return rows[0]

    async def record_many(self, entries: Iterable[AuditEntry]) -> list[AuditRow]:
        """Append several entries in one transaction (one lock, one commit)."""
        items = list(entries)
        if not items:
            return []
        try:
            async with self._pool.connection() as conn, conn.transaction():
                head = await (await conn.execute("select seq, hash from audit_chain_head for update")).fetchone()
                if head is None:
                    raise AuditError("audit_chain_head is empty; was migration 0600 applied?")
                seq, prev = int(head[0]), str(head[1])
                out: list[AuditRow] = []
                for entry in items:
                    # jsonb re-renders numbers (1e20 → 100000000000000000000): hash what
                    # PostgreSQL will give back, so that verify() recomputes the same bytes.
                    stored = await (await conn.execute("select %s::jsonb", (Jsonb(dict(entry.details)),))).fetchone()
                    details: dict[str, Any] = stored[0] if stored else {}
                    seq += 1
                    # Microseconds only: that is what timestamptz keeps.
                    at = datetime.now(UTC)
                    digest = row_hash(
                        seq, at, entry.actor, entry.action, entry.resource, entry.outcome, entry.ip, details, prev
                    )
                    await conn.execute(
                        _INSERT,
                        (
                            seq,
                            at,
                            entry.actor,
                            entry.action,
                            entry.resource,
                            entry.outcome,
                            entry.ip,
                            Jsonb(details),
                            prev,
                            digest,
                        ),
                    )
                    out.append(
                        AuditRow(
                            seq,
                            at,
                            entry.actor,
                            entry.action,
                            entry.resource,
                            entry.outcome,
                            entry.ip,
                            details,
                            prev,
                            digest,
                        )
                    )
                    prev = digest
                await conn.execute("update audit_chain_head set seq = %s, hash = %s", (seq, prev))
        except psycopg.Error as exc:
            raise AuditError(f"could not append to the audit log: {exc}") from exc
        return out

    async def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        """Entries newest first, filtered; page with ``before_seq`` = last ``seq`` seen.

        ``action`` ending in ``.*`` matches a whole area (``session.*``).
        """
        where: list[sql.Composable] = []
        params: list[Any] = []
        if actor is not None:
            where.append(sql.SQL("actor = %s"))
            params.append(actor)
        if action is not None:
            if action.endswith(".*"):
                where.append(sql.SQL("starts_with(action, %s)"))
                params.append(action[:-1])
            else:
                where.append(sql.SQL("action = %s"))
                params.append(action)
        if since is not None:
            where.append(sql.SQL("at >= %s"))
            params.append(since)
        if until is not None:
            where.append(sql.SQL("at < %s"))
            params.append(until)
        if before_seq is not None:
            where.append(sql.SQL("seq < %s"))
            params.append(before_seq)
        clause = sql.SQL(" where ") + sql.SQL(" and ").join(where) if where else sql.SQL("")
        params.append(limit)
        query = sql.SQL("select {} from audit_log{} order by seq desc limit %s").format(_COLUMNS, clause)
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(query, params)).fetchall()
        return [_row(r) for r in rows]

    async def iter_all(self) -> AsyncIterator[AuditRow]:
        """Every entry oldest first (exports)."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor(name="audit_export") as cur:
            await cur.execute(_SELECT_ALL)
            async for values in cur:
                yield _row(values)
