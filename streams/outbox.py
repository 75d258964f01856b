"""The alert outbox: alert transitions committed with the state that produced them, published after.

Writers (the rule and anomaly evaluation in :mod:`streams.pipeline`, the liveness
timer in :mod:`streams.liveness`) call :func:`write_outbox` inside the transaction
that stored the alerts, so a transition is published if and only if it was stored.
:func:`drain_outbox` then publishes committed rows to ``citybrain.alerts`` and
deletes them once Kafka has them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.records import Alert

__all__ = ["drain_outbox", "write_outbox"]


async def write_outbox(conn: psycopg.AsyncConnection, changed: Sequence[tuple[str, Alert]]) -> None:
    """Queue alert transitions for publication, in the caller's transaction.

    Args:
        conn: A connection inside the transaction that stored the alerts.
        changed: ``(transition, alert)`` pairs that changed a row.
    """
    if not changed:
        return
    outbox = []
    for kind, alert in changed:
        doc = alert.to_json()
        doc["transition"] = kind
        outbox.append((alert.device_code, Jsonb(doc)))
    async with conn.cursor() as cur:
        await cur.executemany("insert into alert_outbox (key, payload) values (%s, %s)", outbox)


async def drain_outbox(
    pool: AsyncConnectionPool,
    publish: Callable[[str, bytes, bytes], Awaitable[None]],
    topic: str,
    flush: Callable[[], Awaitable[None]],
    limit: int = 1000,
) -> int:
    """Publish committed alert transitions and delete them once Kafka has them.

    Rows are locked (``skip locked``) so several workers never publish the same
    row at once; a crash after the Kafka ack and before the delete republishes a
    row, so consumers dedupe on (``id``, ``transition``).

    Args:
        pool: The database.
        publish: Sends one record (topic, key, value).
        topic: The alerts topic.
        flush: Waits until every record sent so far is acknowledged.
        limit: Rows per transaction.

    Returns:
        Rows published.
    """
    sent = 0
    while True:
        async with pool.connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    "select seq, key, payload from alert_outbox order by seq limit %s for update skip locked",
                    (limit,),
                )
            ).fetchall()
            if not rows:
                return sent
            for _seq, key, payload in rows:
                await publish(
                    topic, key.encode(), json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
                )
            await flush()
            await conn.execute("delete from alert_outbox where seq = any(%s)", ([r[0] for r in rows],))
            sent += len(rows)
