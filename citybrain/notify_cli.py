"""``citybrain notify``: notification subscriptions from the command line.

* ``citybrain notify list``: the subscriptions (URL queries and secrets masked, as in the API);
* ``citybrain notify add NAME URL [--format F] [--rule GLOB] [--min-severity S] [--district D]…
  [--secret-env VAR] [--template T]``: create one; the secret is read from an environment
  variable so that it stays out of the shell history;
* ``citybrain notify delete ID``;
* ``citybrain notify deliveries ID``: its latest deliveries with their attempts.

Writes go to PostgreSQL directly (no API process needed) and are audited with the actor
``cli``, like ``citybrain users add``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.notify import FORMATS, NotificationMetrics, NotificationStore, NotifyError, Subscription
from citybrain.routes.notifications import masked_url
from citybrain.security.audit import AuditLog
from citybrain.settings import Settings
from core.records import RecordError, Severity

__all__ = ["register"]

T = TypeVar("T")


def _run(settings: Settings, work: Callable[[NotificationStore, AuditLog], Awaitable[T]]) -> T:
    if not settings.database_url:
        raise SystemExit("error: CITYBRAIN_DATABASE_URL is not set")
    url = settings.database_url

    async def go() -> T:
        pool = AsyncConnectionPool(url, min_size=1, max_size=1, open=False)
        await pool.open(wait=True, timeout=30)
        try:
            return await work(NotificationStore(pool, NotificationMetrics(CollectorRegistry())), AuditLog(pool))
        finally:
            await pool.close()

    return asyncio.run(go())


def _line(row: dict[str, Any]) -> str:
    districts = ",".join(row["districts"] or []) or "all"
    state = "" if row["enabled"] else " (disabled)"
    secret = " signed" if row["secret"] else ""
    return (
        f"{row['id']}\t{row['name']}\t{row['format']}\t{row['rule_pattern']}\t"
        f">={Severity(int(row['min_severity'])).label}\t{districts}\t{masked_url(row['url'])}{secret}{state}"
    )


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print one line per subscription (id, name, format, rule, severity, districts, masked URL)."""

    async def work(store: NotificationStore, _: AuditLog) -> list[dict[str, Any]]:
        return await store.list_subscriptions()

    for row in _run(settings, work):
        print(_line(row))
    return 0


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a subscription and print its id."""
    secret = os.environ.get(args.secret_env, "") if args.secret_env else ""
    if args.secret_env and not secret:
        print(f"error: environment variable {args.secret_env} is empty or not set", file=sys.stderr)
        return 1
    try:
        sub = Subscription(
            id=0,
            name=args.name,
            url=args.url,
            rule_pattern=args.rule,
            min_severity=Severity.parse(args.min_severity),
            districts=tuple(args.district),
            format=args.format,
            template=args.template,
            secret=secret,
        )
        # The same target policy as the API and the worker (CITYBRAIN_NOTIFY_ALLOWED_HOSTS).
        asyncio.run(settings.notify_targets().check(sub.url, unresolved_ok=True))
    except (NotifyError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def work(store: NotificationStore, audit: AuditLog) -> int:
        sub_id = await store.create_subscription(sub, "cli")
        details = {"name": sub.name, "url": masked_url(sub.url), "rule": sub.rule_pattern, "format": sub.format}
        await audit.record("cli", "notification.create", f"notification/{sub_id}", "success", None, details)
        return sub_id

    print(_run(settings, work))
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Delete a subscription with its delivery log."""

    async def work(store: NotificationStore, audit: AuditLog) -> bool:
        gone = await store.delete_subscription(args.id)
        if gone:
            await audit.record("cli", "notification.delete", f"notification/{args.id}", "success", None, {})
        return gone

    if not _run(settings, work):
        print(f"error: no subscription {args.id}", file=sys.stderr)
        return 1
    return 0


def cmd_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    """Print a subscription's latest deliveries as JSON lines, newest first."""

    async def work(store: NotificationStore, _: AuditLog) -> list[dict[str, Any]]:
        return await store.deliveries(args.id, args.limit)

    for d in _run(settings, work):
        print(json.dumps(d, default=str, ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citybrain notify …`` to the CLI's subcommands."""
    p = sub.add_parser("notify", help="notification subscriptions (WeCom, DingTalk, SMS gateway webhooks)")
    s = p.add_subparsers(dest="notify_command", required=True, metavar="NOTIFY_COMMAND")
    s.add_parser("list", help="list subscriptions (URL queries and secrets masked)").set_defaults(func=cmd_list)
    q = s.add_parser("add", help="create a subscription; prints its id")
    q.add_argument("name", help="a name shown in the console")
    q.add_argument("url", help="target URL (http or https), e.g. a WeCom or DingTalk robot webhook")
    q.add_argument("--format", choices=FORMATS, default="json", help="body format (default json, for SMS gateways)")
    q.add_argument("--rule", default="*", help="glob over rule ids, e.g. 'air.*' (default: every rule)")
    q.add_argument(
        "--min-severity",
        choices=[s.label for s in Severity],
        default="warning",
        help="ignore transitions below this severity (default warning)",
    )
    q.add_argument("--district", action="append", default=[], help="6-digit district code; repeatable (default all)")
    q.add_argument("--template", default="", help="string.Template body text ($rule $severity $device $message …)")
    q.add_argument(
        "--secret-env", default="", help="name of an environment variable holding the HMAC / DingTalk secret"
    )
    q.set_defaults(func=cmd_add)
    q = s.add_parser("delete", help="delete a subscription and its delivery log")
    q.add_argument("id", type=int, help="subscription id (see notify list)")
    q.set_defaults(func=cmd_delete)
    q = s.add_parser("deliveries", help="a subscription's latest deliveries with their attempts (JSON lines)")
    q.add_argument("id", type=int, help="subscription id (see notify list)")
    q.add_argument("--limit", type=int, default=20, help="how many deliveries (default 20)")
    q.set_defaults(func=cmd_deliveries)
