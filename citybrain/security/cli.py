"""Command-line functions of the security package (wired by :mod:`citybrain.cli`).

* ``citybrain audit verify``: recompute the audit hash chain.
* ``citybrain users add NAME --role R [--district D] [--class C] [--topic T] [--service]``:
  create a user (prints a generated password once) or a service account (prints an API key once).
* ``citybrain keys rotate``: new JWT signing key; the previous one verifies until its tokens expire.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import psycopg
from psycopg_pool import AsyncConnectionPool

from citybrain.security.audit import AuditLog, verify
from citybrain.security.errors import SecurityError
from citybrain.security.identities import IdentityStore, NewPrincipal, grants_of, new_password
from citybrain.settings import Settings

__all__ = ["add_arguments", "cmd_audit_verify", "cmd_keys_rotate", "cmd_users_add"]


def _url(settings: Settings) -> str:
    if not settings.database_url:
        raise SystemExit("error: CITYBRAIN_DATABASE_URL is not set")
    return settings.database_url


def add_arguments(users_add: argparse.ArgumentParser) -> None:
    """Arguments of ``citybrain users add``."""
    users_add.add_argument("name", help="login name of the user or service account")
    users_add.add_argument("--role", action="append", required=True, help="repeat for several roles")
    users_add.add_argument("--district", action="append", default=[], help="6-digit district code; repeatable")
    users_add.add_argument("--class", dest="device_class", action="append", default=[], help="device class; repeatable")
    users_add.add_argument("--topic", action="append", default=[], help="topic pattern; repeatable")
    users_add.add_argument("--service", action="store_true", help="a service account (API key, no password)")


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Walk the audit chain; print OK with the row count, or the first broken row and return 1."""
    with psycopg.connect(_url(settings)) as conn:
        report = verify(conn)
    print(report.describe(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


async def _users_add(url: str, new: NewPrincipal) -> str:
    pool = AsyncConnectionPool(url, min_size=1, max_size=1, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        store = IdentityStore(pool)
        audit = AuditLog(pool)
        if new.kind == "service":
            await store.create(new)
            issued = await store.create_api_key(new.name, label="created by citybrain users add")
            secret = issued.key
        else:
            secret = new_password()
            await store.create(new, secret)
        await audit.record(
            "cli",
            "user.create",
            f"principal/{new.name}",
            "success",
            None,
            {
                "kind": new.kind,
                "roles": list(new.roles),
                "districts": list(new.districts),
                "classes": list(new.classes),
            },
        )
        return secret
    finally:
        await pool.close()


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a user or service account; print its password or API key once."""
    try:
        new = NewPrincipal(
            args.name,
            grants_of(args.role),
            "service" if args.service else "user",
            grants_of(args.district),
            grants_of(args.device_class),
            grants_of(args.topic),
        )
        secret = asyncio.run(_users_add(_url(settings), new))
    except SecurityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    what = "API key" if new.kind == "service" else "password"
    print(f"created {new.kind} {new.name} ({', '.join(new.roles)})")
    print(f"{what} (shown once, store it now): {secret}")
    return 0


async def _rotate(url: str) -> str:
    pool = AsyncConnectionPool(url, min_size=1, max_size=1, open=False)
    await pool.open(wait=True, timeout=30)
    try:
        key = await IdentityStore(pool).rotate_signing_key()
        await AuditLog(pool).record("cli", "keys.rotate", f"signing_key/{key.kid}", "success")
        return key.kid
    finally:
        await pool.close()


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Add a new JWT signing key and retire the previous ones."""
    kid = asyncio.run(_rotate(_url(settings)))
    print(f"new signing key {kid}; previous keys verify until their tokens expire")
    return 0
