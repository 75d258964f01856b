"""At-least-once Kafka sink for raw messages from non-MQTT transports (HJ 212 TCP, webhooks).

::

    connection ──submit()──▶ bounded asyncio.Queue ──▶ per-partition batches
        ──▶ encode_batch ──▶ Kafka (acks=all) ──▶ resolve the caller's future ──▶ reply 9014 / HTTP 200

:meth:`KafkaSink.submit` waits only while the queue is full (that wait is the
backpressure, counted in ``citybrain_sink_backpressure_seconds_total``) and
returns a future that resolves when Kafka acknowledged the record holding the
message. Callers acknowledge their peer only then, so a crash before the
Kafka ack makes the peer resend: duplicates, never loss. The layout of the
record is :mod:`ingest.batch`, the same as the MQTT gateway's, so stream
workers cannot tell the transports apart except by ``RawMessage.transport``.

A failed Kafka send is retried (:func:`core.retry.retrying`) with the futures held (like the gateway holds
its PUBACKs); nothing is dropped. Futures still pending at :meth:`KafkaSink.stop`
fail with :class:`~ingest.errors.SinkError`.

This is the one Kafka batcher of raw messages: the MQTT gateway
(:mod:`ingest.gateway`) hands its messages to a sink too and acknowledges
each MQTT message when its future resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.records import RawMessage
from core.retry import retrying
from core.topics import KafkaTopics, partition_for
from ingest.batch import dead_letter_headers, encode_batch
from ingest.errors import SinkError

__all__ = ["KafkaSink", "KafkaSinkConfig", "KafkaSinkMetrics", "RawSink"]

log = logging.getLogger(__name__)


class RawSink(Protocol):
    """Where transports hand accepted raw messages (and rejects) to."""

    async def submit(self, raw: RawMessage) -> asyncio.Future[None]:
        """Queue a message; the future resolves once it is durably stored."""
        ...

    async def dead_letter(
        self, payload: bytes, reason: str, detail: str, topic: str, received_at: datetime
    ) -> asyncio.Future[None]:
        """Queue a rejected payload for the dead-letter topic."""
        ...


@dataclass(frozen=True, slots=True)
class KafkaSinkConfig:
    """Typed sink settings.

    Attributes:
        kafka_bootstrap: Kafka bootstrap servers.
        topics: Topic names (raw, dead letter).
        partitions: Partitions of the raw topic (device → partition with ``partition_for``).
        source: Who produces (``hj212``, ``webhook``): metric label and dead-letter header.
        queue_max: Messages waiting for a batch, at most; ``submit`` waits beyond that.
        batch_max: Messages per Kafka record, at most.
        batch_max_bytes: Approximate payload bytes per flush, at most.
        linger_ms: How long a partial batch waits for more messages.
        client_id: Kafka client id of the producer (default random).
        replay_s: Keep a copy of each raw record Kafka acknowledged this long (0: none). For a
            broker that acknowledges before its log is safe (the embedded noida-db): when a
            later record gets an offset at or below one it acknowledged, its log went back,
            and the sink sends the copies from that offset on again (the store merges what
            arrives twice).
    """

    kafka_bootstrap: str
    topics: KafkaTopics
    partitions: int = 4
    source: str = "hj212"
    queue_max: int = 10000
    batch_max: int = 500
    batch_max_bytes: int = 900_000
    linger_ms: int = 10
    client_id: str = ""
    replay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.queue_max < 1 or self.batch_max < 1 or self.linger_ms < 0:
            raise ValueError("partitions, queue_max and batch_max must be positive, linger_ms >= 0")


class KafkaSinkMetrics:
    """Sink metrics, registered once per registry; ``source`` labels tell sinks apart."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.submitted = Counter(
            "citybrain_sink_messages_submitted_total", "Messages queued", ["source"], registry=registry
        )
        self.forwarded = Counter(
            "citybrain_sink_messages_forwarded_total", "Messages acknowledged by Kafka", ["source"], registry=registry
        )
        self.dead_lettered = Counter(
            "citybrain_sink_dead_lettered_total", "Payloads dead-lettered", ["source", "reason"], registry=registry
        )
        self.batches = Counter("citybrain_sink_batches_total", "Kafka records produced", ["source"], registry=registry)
        self.kafka_errors = Counter(
            "citybrain_sink_kafka_errors_total", "Failed Kafka sends (retried)", ["source"], registry=registry
        )
        self.queue_depth = Gauge("citybrain_sink_queue_depth", "Messages waiting", ["source"], registry=registry)
        self.backpressure = Counter(
            "citybrain_sink_backpressure_seconds_total",
            "Time submitters waited for queue space",
            ["source"],
            registry=registry,
        )
        self.ack_lag = Histogram(
            "citybrain_sink_ack_lag_seconds",
            "From submit to the Kafka ack",
            ["source"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )


@dataclass(slots=True)
class _Held:
    """A copy of a record Kafka acknowledged, kept ``replay_s`` in case its log loses it."""

    acked_at: float
    partition: int
    offset: int
    items: list[_Item]


@dataclass(slots=True)
class _Item:
    raw: RawMessage | None
    future: asyncio.Future[None]
    t0: float
    # dead letters only
    reason: str = ""
    detail: str = ""
    payload: bytes = b""
    topic: str = ""
    received_at: datetime | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: Items of one submit_many share its future and this count of theirs not yet acked.
    pending: list[int] | None = None

    @property
    def size(self) -> int:
        if self.raw is None:
            return len(self.payload) + 64
        return len(self.raw.payload) + len(self.raw.topic) + 32


class KafkaSink:
    """Batching, at-least-once producer of raw messages (see the module docstring).

    Args:
        config: Settings.
        metrics: Metrics (shared by the sinks of one registry).
        on_record: Called with the message count of every raw record Kafka acknowledged
            (a transport's own batch metrics).
        on_error: Called on every failed Kafka send (before it is retried).
        on_resend: Called with the number of acknowledged messages sent again because the
            broker's log went back (``replay_s``).
    """

    def __init__(
        self,
        config: KafkaSinkConfig,
        metrics: KafkaSinkMetrics,
        *,
        on_record: Callable[[int], None] | None = None,
        on_error: Callable[[], None] | None = None,
        on_resend: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = config
        self._metrics = metrics
        self._src = config.source
        self._on_record = on_record
        self._on_error = on_error
        self._on_resend = on_resend
        # replay_s: copies of acknowledged records; highest offset acknowledged per partition.
        self._held: deque[_Held] = deque()
        self._high: dict[int, int] = {}
        # Labelled children looked up once: submit() runs per message.
        self._submitted = metrics.submitted.labels(self._src)
        self._queue_depth = metrics.queue_depth.labels(self._src)
        self._ack_lag = metrics.ack_lag.labels(self._src)
        self._queue: asyncio.Queue[_Item] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._inflight: list[_Item] = []

    async def start(self) -> None:
        """Connect the producer and start batching.

        Raises:
            SinkError: Kafka is unreachable.
        """
        self._queue = asyncio.Queue(self.cfg.queue_max)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.cfg.kafka_bootstrap,
            acks="all",
            linger_ms=2,
            max_request_size=max(1_048_576, self.cfg.batch_max_bytes + 65536),
            request_timeout_ms=15000,
            client_id=self.cfg.client_id or f"citybrain-{self._src}-sink-{uuid.uuid4().hex[:6]}",
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise SinkError(f"cannot reach Kafka at {self.cfg.kafka_bootstrap}: {exc}") from exc
        self._producer = producer
        self._task = asyncio.create_task(self._run(), name=f"{self._src}-sink")

    def healthy(self) -> bool:
        """True while the batching task runs."""
        return self._task is not None and not self._task.done()

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Flush what is queued (up to ``drain_timeout``), then close the producer."""
        self._closing = True
        if self._task is not None and self._queue is not None:
            if not self._task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queue.join(), drain_timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = list(self._inflight)
        if self._queue is not None:
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
        for item in left:
            if not item.future.done():
                item.future.set_exception(SinkError("sink stopped before the Kafka ack"))
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def submit(self, raw: RawMessage) -> asyncio.Future[None]:
        """Queue a raw message for ``topics.raw``.

        Returns:
            A future resolved after the Kafka ack of the record carrying the message.

        Raises:
            SinkError: the sink is not running.
        """
        fut = await self._put(_Item(raw, self._new_future(), time.monotonic()))
        self._submitted.inc()
        return fut

    async def submit_many(self, raws: Sequence[RawMessage]) -> asyncio.Future[None]:
        """Queue raw messages for ``topics.raw`` behind one future (a transport's burst).

        The same guarantee as :meth:`submit` for each message, at one future and one
        metric update per call instead of per message: the future resolves once Kafka
        acknowledged every record carrying one of them.

        Raises:
            SinkError: the sink is not running.
        """
        fut = self._new_future()
        t0 = time.monotonic()
        # The items share the future and a count: they may be flushed in different Kafka
        # batches, and the future resolves only with the last of them.
        pending = [len(raws)]
        for raw in raws:
            await self._put(_Item(raw, fut, t0, pending=pending), report=False)
        assert self._queue is not None
        self._queue_depth.set(self._queue.qsize())
        self._submitted.inc(len(raws))
        if not raws:
            fut.set_result(None)
        return fut

    async def dead_letter(
        self,
        payload: bytes,
        reason: str,
        detail: str,
        topic: str,
        received_at: datetime,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> asyncio.Future[None]:
        """Queue a rejected payload for ``topics.deadletter`` with its reason headers.

        Args:
            payload: The original bytes.
            reason: Metric-label-safe reason.
            detail: Human-readable detail (cut to 500 characters).
            topic: Where the payload came from.
            received_at: When it was received.
            headers: More Kafka headers, after the standard ones.

        Returns:
            A future resolved after the Kafka ack.
        """
        item = _Item(
            None,
            self._new_future(),
            time.monotonic(),
            reason=reason,
            detail=detail,
            payload=payload,
            topic=topic,
            received_at=received_at,
            headers=headers,
        )
        return await self._put(item)

    def _new_future(self) -> asyncio.Future[None]:
        if self._queue is None or self._closing:
            raise SinkError("sink is not running")
        return asyncio.get_running_loop().create_future()

    async def _put(self, item: _Item, report: bool = True) -> asyncio.Future[None]:
        assert self._queue is not None
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            t = time.monotonic()
            await self._queue.put(item)
            self._metrics.backpressure.labels(self._src).inc(time.monotonic() - t)
        if report:
            self._queue_depth.set(self._queue.qsize())
        return item.future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        linger = self.cfg.linger_ms / 1000
        limit = self.cfg.batch_max * self.cfg.partitions
        while True:
            items = [await queue.get()]
            size = items[0].size
            deadline = time.monotonic() + linger
            while len(items) < limit and size < self.cfg.batch_max_bytes:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                items.append(item)
                size += item.size
            self._queue_depth.set(queue.qsize())
            self._inflight = items
            await self._flush(items)
            self._inflight = []
            for _ in items:
                queue.task_done()

    async def _flush(self, items: list[_Item]) -> None:
        assert self._producer is not None
        by_partition: dict[int, list[_Item]] = defaultdict(list)
        rejects: list[_Item] = []
        for item in items:
            if item.raw is None:
                rejects.append(item)
            else:
                key = item.raw.device_code or item.raw.topic
                by_partition[partition_for(key, self.cfg.partitions)].append(item)
        records: list[int] = []
        sent: list[tuple[int, int, list[_Item]]] = []  # (partition, offset, items) of each raw record

        async def send() -> None:
            # Hold the callers' acks while this fails: they have not answered their peers yet.
            assert self._producer is not None
            records.clear()
            sent.clear()
            chunks = await self._send_raw(by_partition)
            futures = [f for _, _, f in chunks]
            records.extend(len(c) for _, c, _ in chunks)
            for r in rejects:
                headers = dead_letter_headers(r.reason, r.detail, r.topic, r.received_at, self._src)
                headers += r.headers
                futures.append(
                    await self._producer.send(
                        self.cfg.topics.deadletter, value=r.payload, key=r.topic.encode()[:200], headers=headers
                    )
                )
            results = await asyncio.gather(*futures)
            sent.extend((p, md.offset, c) for (p, c, _), md in zip(chunks, results, strict=False))

        def failed(exc: BaseException) -> None:
            self._metrics.kafka_errors.labels(self._src).inc()
            if self._on_error is not None:
                self._on_error()

        what = f"{self._src} sink: Kafka send of {len(items)} messages failed"
        await retrying(KafkaError, what=what, log=log, wait_s=0.5, max_wait_s=None, on_retry=failed)(send)
        self._metrics.batches.labels(self._src).inc(len(records))
        if self._on_record is not None:
            for n in records:
                self._on_record(n)
        now = time.monotonic()
        ack_lag = self._ack_lag
        for item in items:
            ack_lag.observe(now - item.t0)
            if item.pending is not None:
                item.pending[0] -= 1
                if item.pending[0] > 0:
                    continue  # more of its submit_many still to be acked
            if not item.future.done():
                item.future.set_result(None)
        self._metrics.forwarded.labels(self._src).inc(sum(len(g) for g in by_partition.values()))
        for r in rejects:
            self._metrics.dead_lettered.labels(self._src, r.reason).inc()
        if self.cfg.replay_s > 0:
            await self._replay(sent)

    async def _send_raw(
        self, by_partition: dict[int, list[_Item]]
    ) -> list[tuple[int, list[_Item], asyncio.Future[Any]]]:
        """Send raw messages as records of at most ``batch_max``; (partition, items, ack future) each."""
        assert self._producer is not None
        out = []
        for p, group in by_partition.items():
            for i in range(0, len(group), self.cfg.batch_max):
                chunk = group[i : i + self.cfg.batch_max]
                value = encode_batch(it.raw for it in chunk if it.raw is not None)
                fut = await self._producer.send(self.cfg.topics.raw, value=value, key=str(p).encode(), partition=p)
                out.append((p, chunk, fut))
        return out

    async def _replay(self, sent: list[tuple[int, int, list[_Item]]]) -> None:
        """Keep copies of what Kafka acknowledged; send again what its log lost (already acked to callers)."""
        lost = self._retain(sent)
        while lost:

            async def resend(groups: dict[int, list[_Item]] = lost) -> list[tuple[int, int, list[_Item]]]:
                chunks = await self._send_raw(groups)
                results = await asyncio.gather(*(f for _, _, f in chunks))
                return [(p, md.offset, c) for (p, c, _), md in zip(chunks, results, strict=False)]

            what = f"{self._src} sink: Kafka resend of lost records failed"
            again: list[tuple[int, int, list[_Item]]] = await retrying(
                KafkaError, what=what, log=log, wait_s=0.5, max_wait_s=None
            )(resend)
            lost = self._retain(again)

    def _retain(self, records: list[tuple[int, int, list[_Item]]]) -> dict[int, list[_Item]]:
        """Keep copies of acknowledged records ``replay_s``; return those the broker's log lost."""
        now = time.monotonic()
        lost: dict[int, list[_Item]] = defaultdict(list)
        for p, offset, items in records:
            if offset <= self._high.get(p, -1):
                # The log went back: every record we acknowledged at this offset or beyond is gone.
                gone = [h for h in self._held if h.partition == p and h.offset >= offset]
                n = sum(len(h.items) for h in gone)
                if self._on_resend is not None:
                    self._on_resend(n)
                log.error(
                    "Kafka log %s[%d] went back to offset %d (had acknowledged %d): sending %d messages again",
                    self.cfg.topics.raw,
                    p,
                    offset,
                    self._high[p],
                    n,
                )
                for h in gone:
                    lost[p].extend(h.items)
                self._held = deque(h for h in self._held if h not in gone)
            self._high[p] = offset
            self._held.append(_Held(now, p, offset, items))
        # Pruned only here, after a successful send: while the broker is down nothing expires,
        # so the first send after its restart still finds what it lost.
        keep = self.cfg.replay_s
        while self._held and now - self._held[0].acked_at > keep:
            self._held.popleft()
        return dict(lost)
