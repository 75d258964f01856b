"""The ledger change feed on real PostgreSQL: a refresh reads what changed, and never misses a late commit."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from devices.ledger import IndexFeed, Ledger, NewDevice
from devices.models import ModelRegistry

pytestmark = pytest.mark.integration


async def _register(ledger: Ledger, n: int) -> list[str]:
    codes = [c.full for c in await ledger.allocate("350203", "0308", n)]
    for c in codes:
        await ledger.register(NewDevice(c, "air-station"))
    return codes


async def test_refresh_applies_only_the_changes(
    pool: AsyncConnectionPool, models: ModelRegistry, database_url: str
) -> None:
    ledger = Ledger(pool, models)
    codes = await _register(ledger, 6)
    feed = IndexFeed(pool)
    await feed.load()
    assert len(feed.index) == 6
    assert await feed.refresh() == 0

    await ledger.transition(codes[0], "suspended", "maintenance", actor="test")
    await ledger.rotate_credentials(codes[1], actor="test")  # not an index column: no change
    await ledger.update(codes[2], {"attributes": {"sensor_vendor": "B"}}, actor="test")
    (new,) = await _register(ledger, 1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from device_state_history where code = %s", (codes[3],))
        conn.execute("delete from devices where code = %s", (codes[3],))

    assert await feed.refresh() == 4
    index = feed.index
    assert index.get(codes[0]).state == "suspended"  # type: ignore[union-attr]
    assert index.get(codes[2]).attributes == {"sensor_vendor": "B"}  # type: ignore[union-attr]
    assert index.get(new) is not None and index.get(codes[3]) is None
    assert len(index) == 6
    assert await feed.refresh() == 0  # the watermark moved past them
    reloaded = await ledger.load_compact_index()
    assert all(reloaded.get(c) == index.get(c) for c in [*codes, new])


async def test_a_change_committed_late_is_not_missed(
    pool: AsyncConnectionPool, models: ModelRegistry, database_url: str
) -> None:
    ledger = Ledger(pool, models)
    codes = await _register(ledger, 2)
    feed = IndexFeed(pool)
    await feed.load()
    with psycopg.connect(database_url) as slow:
        # Takes its change number first, commits last.
        slow.execute("update devices set state = 'suspended' where code = %s", (codes[0],))
        await ledger.transition(codes[1], "suspended", "maintenance", actor="test")
        await feed.refresh()
        assert feed.index.get(codes[1]).state == "suspended"  # type: ignore[union-attr]
        assert feed.index.get(codes[0]).state == "registered"  # type: ignore[union-attr]
        slow.commit()
    await feed.refresh()
    assert feed.index.get(codes[0]).state == "suspended"  # type: ignore[union-attr]


async def test_a_large_change_is_read_as_a_full_load(
    pool: AsyncConnectionPool, models: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("devices.ledger._RELOAD_ABOVE", 0)
    ledger = Ledger(pool, models)
    codes = await _register(ledger, 4)
    feed = IndexFeed(pool)
    await feed.load()
    first = feed.index
    more = await _register(ledger, 3)  # 3 changes > 0 + 4 // 4
    assert await feed.refresh() == 3
    assert feed.index is not first  # a new index, read in full
    assert all(feed.index.get(c) is not None for c in [*codes, *more])
    assert await feed.refresh() == 0
