"""The live alert feed: PostgreSQL LISTEN → bounded per-client queues → SSE.

Every alert change is announced by :class:`alerts.store.AlertStore` with
``pg_notify``. One listening connection per API process fans the
notifications out to subscribers (consoles, apps). A subscriber that cannot
keep up is disconnected rather than letting its queue grow without bound;
it reconnects and resynchronises from the alerts API, and the drop is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge

from alerts.store import NOTIFY_CHANNEL
from core.retry import retrying

__all__ = ["AlertFeed", "FeedMetrics"]

log = logging.getLogger(__name__)

Filter = Callable[[dict[str, Any]], bool]


class FeedMetrics:
    """Feed metrics on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.subscribers = Gauge("citybrain_alert_feed_subscribers", "Open SSE subscribers", registry=registry)
        self.events = Counter("citybrain_alert_feed_events_total", "Alert events received", registry=registry)
        self.dropped = Counter(
            "citybrain_alert_feed_dropped_subscribers_total",
            "Subscribers dropped for being too slow",
            registry=registry,
        )


class _Subscriber:
    __slots__ = ("accept", "overflowed", "queue")

    def __init__(self, accept: Filter, maxsize: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.accept = accept
        self.overflowed = False


class AlertFeed:
    """Fan-out of alert notifications to many subscribers."""

    def __init__(self, database_url: str, metrics: FeedMetrics, *, queue_max: int = 1000) -> None:
        self._url = database_url
        self._metrics = metrics
        self._queue_max = queue_max
        self._subs: set[_Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="alert-feed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        while True:
            # A new retrier per connection: the wait starts small again after a connection that worked.
            retry = retrying(
                psycopg.Error,
                what="alert feed cannot reach its database",
                log=log,
                wait_s=0.5,
                max_wait_s=10.0,
                level=logging.WARNING,
            )
            conn: psycopg.AsyncConnection[Any] = await retry(self._subscribe)
            try:
                async with conn:
                    self._ready.set()
                    async for note in conn.notifies():
                        self._dispatch(note.payload)
            except psycopg.Error as exc:
                log.warning("alert feed lost its database connection (%s); reconnecting", exc)

    async def _subscribe(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        try:
            await conn.execute(f"listen {NOTIFY_CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    def _dispatch(self, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            log.warning("alert feed: undecodable notification skipped")
            return
        self._metrics.events.inc()
        for sub in list(self._subs):
            if sub.overflowed or not sub.accept(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._metrics.dropped.inc()

    async def subscribe(self, accept: Filter, *, heartbeat_s: float = 15.0) -> AsyncIterator[dict[str, Any] | None]:
        """Events that pass ``accept``; ``None`` is a heartbeat. Ends when the subscriber overflows."""
        sub = _Subscriber(accept, self._queue_max)
        self._subs.add(sub)
        self._metrics.subscribers.set(len(self._subs))
        try:
            while not sub.overflowed:
                try:
                    yield await asyncio.wait_for(sub.queue.get(), heartbeat_s)
                except TimeoutError:
                    yield None
        finally:
            self._subs.discard(sub)
            self._metrics.subscribers.set(len(self._subs))
