"""A stopping worker ends the batch in hand and does not drain what it fetched ahead.

Regression: a worker stopped behind a backlog (after a benchmark) drained every
record Faust had fetched ahead (``stream_wait_empty``), which took longer than its
supervisor's 10 s (18 s measured with 40,000 messages queued), so it was killed:
"worker did not stop in 10s; killing it".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from core.topics import KafkaTopics
from devices.models import shipped_models
from streams.app import BatchLoop, WorkerConfig, create_app


async def _batches(n: int) -> AsyncIterator[Sequence[bytes]]:
    for i in range(n):
        yield [str(i).encode()]


def test_the_worker_does_not_drain_records_fetched_ahead_on_stop(tmp_path: Path) -> None:
    cfg = WorkerConfig(
        kafka_bootstrap="127.0.0.1:9",
        database_url="postgresql://nowhere/none",
        topics=KafkaTopics("t"),
        partitions=2,
        data_dir=str(tmp_path),
        web_port=6066,
    )
    app = create_app(cfg, CollectorRegistry(), shipped_models())
    assert app.conf.stream_wait_empty is False


async def test_stop_lets_the_batch_in_hand_finish_and_takes_no_other() -> None:
    loop = BatchLoop()
    started, release = asyncio.Event(), asyncio.Event()
    done: list[bytes] = []

    async def step(values: Sequence[bytes]) -> None:
        started.set()
        await release.wait()
        done.extend(values)

    runner = asyncio.create_task(loop.run(_batches(3), step))
    await started.wait()
    stopper = asyncio.create_task(loop.stop(timeout=30))
    await asyncio.sleep(0)
    assert not stopper.done()  # waiting for the batch in hand
    release.set()
    assert await stopper is True
    await runner
    assert done == [b"0"]  # finished, and no further batch taken


async def test_a_batch_that_does_not_finish_is_cancelled_and_the_loop_ends_quietly() -> None:
    loop = BatchLoop()
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def step(values: Sequence[bytes]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a batch that would outlast the supervisor
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    runner = asyncio.create_task(loop.run(_batches(3), step))
    await started.wait()
    assert await loop.stop(timeout=0.01) is False
    await runner  # ends without raising
    assert cancelled == [True]
    assert loop.stopping


async def test_cancelling_the_agent_itself_still_cancels() -> None:
    loop = BatchLoop()
    started = asyncio.Event()

    async def step(values: Sequence[bytes]) -> None:
        started.set()
        await asyncio.Event().wait()

    runner = asyncio.create_task(loop.run(_batches(3), step))
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_stop_when_idle_returns_at_once() -> None:
    loop = BatchLoop()
    assert await loop.stop(timeout=30) is True
    seen: list[Sequence[bytes]] = []

    async def step(values: Sequence[bytes]) -> None:
        seen.append(values)

    await loop.run(_batches(3), step)
    assert seen == []
