"""streams.state.StateCache: a state is served only at the version it was cached at, and the cache is bounded."""

from __future__ import annotations

import pytest

from streams.state import StateCache


def test_a_state_is_served_only_at_its_version() -> None:
    cache = StateCache(10)
    state = {"m": {}}
    cache.put("A", 3, state)
    assert cache.get("A", 3) is state
    assert cache.get("A", 4) is None  # another writer moved the row on
    assert cache.get("B", 1) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_forget_drops_what_did_not_commit() -> None:
    cache = StateCache(10)
    cache.put("A", 1, {})
    cache.put("B", 1, {})
    cache.forget(["A", "C"])
    assert cache.get("A", 1) is None
    assert cache.get("B", 1) == {}


def test_it_is_bounded_and_drops_the_entries_written_longest_ago() -> None:
    cache = StateCache(20)
    for i in range(20):
        cache.put(f"D{i}", 1, i)
    cache.put("D0", 2, "rewritten")  # a write makes it the newest
    cache.put("D20", 1, 20)
    assert len(cache) <= 20
    assert cache.get("D1", 1) is None  # the oldest write went first
    assert cache.get("D0", 2) == "rewritten"
    assert cache.get("D20", 1) == 20


def test_size_zero_caches_nothing_and_negative_is_refused() -> None:
    cache = StateCache(0)
    cache.put("A", 1, {})
    assert len(cache) == 0
    with pytest.raises(ValueError):
        StateCache(-1)
