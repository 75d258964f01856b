"""Compatibility shim for Kafka-protocol brokers that do not long-poll fetches.

A Kafka broker holds an empty fetch for up to ``fetch.max.wait.ms``; some
Kafka-protocol brokers (noida-db, used for dev, tests and the demo) answer at
once. aiokafka then re-fetches in a tight loop and an idle consumer burns a
whole core (measured: 55 % CPU for one idle consumer). The shim makes an
empty fetch that came back early wait a short, fixed backoff before the next
one. Against a real Kafka it never triggers, because the broker itself waits.

It is installed explicitly at the process edge (CLI, tests), never at import.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["install_empty_fetch_backoff"]

_installed: dict[str, float] = {}


def install_empty_fetch_backoff(backoff_s: float = 0.05) -> None:
    """Patch aiokafka's fetcher once; later calls only change the backoff."""
    if backoff_s <= 0:
        return
    _installed["backoff"] = backoff_s
    if "patched" in _installed:
        return
    from aiokafka.consumer.fetcher import Fetcher

    original = Fetcher._proc_fetch_request

    async def _proc_fetch_request(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        t0 = time.monotonic()
        has_data = await original(self, assignment, node_id, request)
        if not has_data:
            wait = _installed["backoff"] - (time.monotonic() - t0)
            if wait > 0:
                try:
                    await asyncio.sleep(wait)
                except asyncio.CancelledError:
                    # aiokafka cancels and awaits pending fetches on close;
                    # the original coroutine returns normally then, so do we.
                    return has_data
        return has_data

    Fetcher._proc_fetch_request = _proc_fetch_request
    _installed["patched"] = 1.0
