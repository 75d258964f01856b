"""The alert outbox: alert transitions committed with the state that produced them, published after.

Writers (the rule and anomaly evaluation in :mod:`streams.pipeline`, the liveness
timer in :mod:`streams.liveness`) call :func:`write_outbox` inside the transaction
that stored the alerts, so a transition is published if and only if it was stored.
:func:`drain_outbox` then publishes committed rows to ``citybrain.alerts`` and
deletes them once Kafka has them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from core.jsonio import dumps, loads
from core.records import Alert

__all__ = ["REPLAY_S", "drain_outbox", "write_outbox"]

log = logging.getLogger(__name__)


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


#: How long a published transition is kept to be sent again if Kafka loses it, as the
#: gateway keeps raw messages (``GatewayConfig.kafka_replay_s``).
REPLAY_S = 120.0


async def drain_outbox(
    pool: AsyncConnectionPool,
    publish: Callable[[str, bytes, bytes], Awaitable[Any]],
    topic: str,
    flush: Callable[[], Awaitable[None]],
    limit: int = 1000,
    *,
    acked: dict[int, int] | None = None,
    replay_s: float = REPLAY_S,
    end_offsets: Callable[[list[int]], Awaitable[dict[int, int]]] | None = None,
) -> int:
    """Publish committed alert transitions; keep them ``replay_s`` after Kafka acknowledged them.

    Rows are locked (``skip locked``) so several workers never publish the same
    row at once; a crash after the Kafka ack and before the rows are marked
    republishes them, so consumers dedupe on (``id``, ``transition``).

    A Kafka broker can lose records it acknowledged (the embedded one on kill -9,
    a cluster after an unclean leader election): its log's end moves back, and
    the next record on that partition gets an offset at or below one already
    acknowledged. ``publish`` may return a future of the record's metadata
    (partition, offset); when it does, ``acked`` keeps the highest offset
    acknowledged per partition, and a record landing at or below it makes every
    row kept on that partition at or beyond its offset be published again.

    Args:
        pool: The database.
        publish: Sends one record (topic, key, value); may return a future of its metadata.
        topic: The alerts topic.
        flush: Waits until every record sent so far is acknowledged.
        limit: Rows per transaction.
        acked: Highest acknowledged offset per partition (the caller keeps it between calls).
        replay_s: How long published rows are kept for a replay.
        end_offsets: The alerts topic's log end offset per partition; when given, kept rows at
            or beyond it (the broker lost them, and nothing was published there since) are
            published again without waiting for a next record to show the loss.

    Returns:
        Rows published (replays included).
    """
    acked = {} if acked is None else acked
    sent = 0
    while True:
        async with pool.connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    "select seq, key, payload::text from alert_outbox where published_at is null"
                    " order by seq limit %s for update skip locked",
                    (limit,),
                )
            ).fetchall()
            await conn.execute(
                "delete from alert_outbox where published_at < now() - make_interval(secs => %s)", (replay_s,)
            )
            if not rows:
                if end_offsets is not None:
                    sent += await _replay_behind_end(conn, publish, topic, flush, acked, end_offsets)
                return sent
            placed = await _send(rows, publish, topic, flush)
            lost_from = _regressions(placed, acked)
            if lost_from:
                # Rows acknowledged earlier on those partitions at or beyond the new offset are gone.
                again = await (
                    await conn.execute(
                        "select o.seq, o.key, o.payload::text from alert_outbox o"
                        " join unnest(%s::int[], %s::int8[]) as l(p, off)"
                        " on o.kafka_partition = l.p and o.kafka_offset >= l.off"
                        " where o.published_at is not null order by o.seq for update skip locked",
                        (list(lost_from), list(lost_from.values())),
                    )
                ).fetchall()
                log.warning(
                    "Kafka lost %d alert transition(s) it had acknowledged (partitions %s); publishing them again",
                    len(again),
                    sorted(lost_from),
                )
                placed += await _send(again, publish, topic, flush)
                _regressions(placed[-len(again) :] if again else [], acked)
            await conn.execute(
                "update alert_outbox o set published_at = now(), kafka_partition = p.p, kafka_offset = p.off"
                " from unnest(%s::int8[], %s::int[], %s::int8[]) as p(seq, p, off) where o.seq = p.seq",
                ([r[0] for r in placed], [r[1] for r in placed], [r[2] for r in placed]),
            )
            sent += len(placed)


async def _send(
    rows: Sequence[tuple[Any, ...]],
    publish: Callable[[str, bytes, bytes], Awaitable[Any]],
    topic: str,
    flush: Callable[[], Awaitable[None]],
) -> list[tuple[int, int | None, int | None]]:
    """Publish rows, wait for the acknowledgements; ``(seq, partition, offset)`` per row (None: not known)."""
    futures = []
    for _seq, key, payload in rows:
        # Re-serialised compact (PostgreSQL's jsonb text has spaces after separators).
        futures.append(await publish(topic, key.encode(), dumps(loads(payload))))
    await flush()
    out: list[tuple[int, int | None, int | None]] = []
    for (seq, _, _), fut in zip(rows, futures, strict=True):
        md = fut.result() if isinstance(fut, asyncio.Future) and fut.done() and not fut.exception() else None
        partition, offset = getattr(md, "partition", None), getattr(md, "offset", None)
        out.append((seq, partition, offset))
    return out


def _regressions(placed: Sequence[tuple[int, int | None, int | None]], acked: dict[int, int]) -> dict[int, int]:
    """Partitions whose log moved back (an offset at or below one acknowledged), with the lowest such offset."""
    lost: dict[int, int] = {}
    for _seq, partition, offset in placed:
        if partition is None or offset is None:
            continue
        if offset <= acked.get(partition, -1):
            lost[partition] = min(offset, lost.get(partition, offset))
    for _seq, partition, offset in placed:
        if partition is not None and offset is not None:
            acked[partition] = offset if partition in lost else max(offset, acked.get(partition, -1))
    return lost


async def _replay_behind_end(
    conn: psycopg.AsyncConnection,
    publish: Callable[[str, bytes, bytes], Awaitable[Any]],
    topic: str,
    flush: Callable[[], Awaitable[None]],
    acked: dict[int, int],
    end_offsets: Callable[[list[int]], Awaitable[dict[int, int]]],
) -> int:
    """Publish again the kept rows that lie at or beyond their partition's log end (lost by the broker)."""
    kept = await (
        await conn.execute(
            "select kafka_partition, max(kafka_offset) from alert_outbox"
            " where published_at is not null and kafka_partition is not null group by 1"
        )
    ).fetchall()
    if not kept:
        return 0
    ends = await end_offsets([int(p) for p, _ in kept])
    lost_from = {int(p): ends[int(p)] for p, top in kept if int(p) in ends and ends[int(p)] <= int(top)}
    if not lost_from:
        return 0
    again = await (
        await conn.execute(
            "select o.seq, o.key, o.payload::text from alert_outbox o"
            " join unnest(%s::int[], %s::int8[]) as l(p, off) on o.kafka_partition = l.p and o.kafka_offset >= l.off"
            " where o.published_at is not null order by o.seq for update skip locked",
            (list(lost_from), list(lost_from.values())),
        )
    ).fetchall()
    log.warning(
        "Kafka's log of %s ends before %d alert transition(s) it had acknowledged; publishing them again",
        sorted(lost_from),
        len(again),
    )
    for p in lost_from:
        acked.pop(p, None)
    placed = await _send(again, publish, topic, flush)
    _regressions(placed, acked)
    await conn.execute(
        "update alert_outbox o set published_at = now(), kafka_partition = p.p, kafka_offset = p.off"
        " from unnest(%s::int8[], %s::int[], %s::int8[]) as p(seq, p, off) where o.seq = p.seq",
        ([r[0] for r in placed], [r[1] for r in placed], [r[2] for r in placed]),
    )
    return len(placed)
