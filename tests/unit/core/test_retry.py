"""core.retry: the one retry policy (tenacity underneath)."""

from __future__ import annotations

import logging

import pytest

from core.retry import retrying

log = logging.getLogger(__name__)


async def test_retries_the_named_error_until_it_succeeds_and_counts_each_retry() -> None:
    calls: list[int] = []
    seen: list[BaseException] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError(f"down {len(calls)}")
        return "up"

    retry = retrying(ConnectionError, what="test op failed", log=log, wait_s=0.001, on_retry=seen.append)
    assert await retry(flaky) == "up"
    assert len(calls) == 4
    assert [str(e) for e in seen] == ["down 1", "down 2", "down 3"]


async def test_other_errors_propagate_at_once() -> None:
    calls: list[int] = []

    async def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await retrying(ConnectionError, what="x", log=log, wait_s=0.001)(broken)
    assert calls == [1]


def test_waits_double_up_to_the_cap_or_stay_fixed() -> None:
    from tenacity import RetryCallState

    def waits(r: object) -> list[float]:
        out = []
        for n in range(1, 8):
            state = RetryCallState(r, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
            state.attempt_number = n
            out.append(r.wait(state))  # type: ignore[attr-defined]
        return out

    assert waits(retrying(OSError, what="x", log=log)) == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert waits(retrying(OSError, what="x", log=log, wait_s=0.5, max_wait_s=None)) == [0.5] * 7
