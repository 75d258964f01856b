"""The alert outbox publishes again what a Kafka broker acknowledged and then lost (kill -9 of the broker)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from streams.outbox import drain_outbox

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Meta:
    partition: int
    offset: int


class Log:
    """One partition of a broker log that a crash can cut back (records acknowledged, then lost)."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    async def publish(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[Meta]:
        self.records.append(value)
        fut: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        fut.set_result(Meta(0, len(self.records) - 1))
        return fut

    async def flush(self) -> None:
        return None

    def crash(self, lose: int) -> None:
        del self.records[-lose:]

    def ids(self) -> set[int]:
        return {json.loads(v)["n"] for v in self.records}


def _queue(url: str, *ns: int) -> None:
    with psycopg.connect(url) as conn:
        for n in ns:
            conn.execute("insert into alert_outbox (key, payload) values ('d', %s)", (json.dumps({"n": n}),))


async def test_transitions_a_broker_lost_after_acknowledging_them_are_published_again(
    database_url: str, pool: AsyncConnectionPool
) -> None:
    log, acked = Log(), {}
    _queue(database_url, 1, 2, 3)
    assert await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked=acked) == 3
    log.crash(lose=2)  # the broker restarts without transitions 2 and 3
    _queue(database_url, 4)
    # Transition 4 lands at offset 1, below the 2 acknowledged: 2 and 3 go out again.
    assert await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked=acked) == 3
    assert log.ids() == {1, 2, 3, 4}
    assert await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked=acked) == 0  # nothing twice


async def test_published_transitions_are_kept_only_for_the_replay_window(
    database_url: str, pool: AsyncConnectionPool
) -> None:
    log = Log()
    _queue(database_url, 1)
    await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked={})
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from alert_outbox where published_at is not null").fetchone() == (1,)
    await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked={}, replay_s=0)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from alert_outbox").fetchone() == (0,)
    assert log.ids() == {1}


async def test_a_lost_tail_is_published_again_without_waiting_for_a_next_transition(
    database_url: str, pool: AsyncConnectionPool
) -> None:
    log, acked = Log(), {}

    async def end_offsets(partitions: list[int]) -> dict[int, int]:
        return dict.fromkeys(partitions, len(log.records))

    _queue(database_url, 1, 2, 3)
    await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked=acked, end_offsets=end_offsets)
    log.crash(lose=2)  # and no alert follows
    assert await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked=acked, end_offsets=end_offsets) == 2
    assert log.ids() == {1, 2, 3}
    assert await drain_outbox(pool, log.publish, "t.alerts", log.flush, acked=acked, end_offsets=end_offsets) == 0
