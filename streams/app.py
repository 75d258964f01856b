"""The Faust stream worker: a thin agent over :class:`streams.pipeline.Pipeline`.

Built by :func:`create_app` from typed arguments; nothing connects at import.
Run with ``citybrain worker`` (several processes share the raw topic's
partitions through the consumer group).

``role`` (``CITYBRAIN_WORKER_ROLE``) splits the work so alert evaluation can
scale on its own:

* ``all`` (default): normalise, store, republish, rules, anomaly detectors,
  liveness — one process does everything;
* ``ingest``: normalise, store (readings, liveness, sessions), republish on
  the readings topics, storage maintenance; no alerts;
* ``alerts``: consumes the readings topics (``citybrain.readings.{class}``,
  keyed by device, so each device stays in order) in its own consumer group
  (``<app id>-alerts``) and runs rules, anomaly detectors and the liveness timer.

**Stopping (SIGTERM).** The worker finishes the batch in hand (or cancels it
after :data:`STOP_BATCH_WAIT_S`), commits the offsets of what it finished and
leaves. It does not drain what it had fetched but not yet taken into a batch
(Faust's ``stream_wait_empty`` is off): those records are not committed and
the next owner of the partitions processes them, which the idempotent store
and the rule watermarks make harmless. Draining them — up to Faust's 4,096
records per partition, each a gateway batch of up to 500 messages — is what
made a worker stopped behind a backlog (after a benchmark) overrun its
supervisor's 10 s and get killed. The database pool closes only after the
batch in hand has ended (:class:`BatchLoop`), so no batch meets a closed pool
and retries against it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import faust
import psycopg
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter, generate_latest
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly.config import AnomalyConfig
from alerts.errors import RuleError
from alerts.notify import (
    Dispatcher,
    NotificationMetrics,
    NotificationStore,
    PolicyResolver,
    RetryPolicy,
    TargetPolicy,
    WebhookSender,
    parse_transitions,
)
from alerts.rules import RuleDirectory, RuleSet
from core.topics import KafkaTopics
from devices.models import ModelRegistry
from streams.debug import Capture, DeadLetter, prune_captures, prune_dead_letters, record_dead_letters
from streams.errors import MaintenanceError
from streams.liveness import LivenessConfig, check_liveness
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.retention import DEFAULT_ROLLUP_RETENTION_DAYS, maintenance
from streams.store import ReadingStore, StoreConfig, StoreMetrics

__all__ = ["WORKER_ROLES", "BatchLoop", "WorkerConfig", "create_app", "tune_gc"]

log = logging.getLogger(__name__)


def since_start() -> str:
    """Wall and CPU seconds since this process started, for start-up logs (Linux; else CPU only).

    A restarted worker's time to recover is mostly its start-up: these figures show where it
    went (imports and set-up before "ready", the group join before "partitions assigned").
    """
    cpu = time.process_time()
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        wall = uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return f"{cpu:.1f} CPU-s after process start"
    return f"{wall:.1f} s ({cpu:.1f} CPU-s) after process start"


#: What a worker may be asked to do (see the module docstring).
WORKER_ROLES = ("all", "ingest", "alerts")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Typed worker settings (built from :class:`citybrain.settings.Settings`)."""

    kafka_bootstrap: str
    database_url: str
    topics: KafkaTopics
    partitions: int
    data_dir: str
    web_port: int
    web_host: str = "127.0.0.1"
    batch_max: int = 200
    batch_within_s: float = 0.2
    pool_size: int = 4
    #: Seconds before a pooled connection is replaced (bounds the backends' cache growth).
    pool_max_lifetime_s: float = 600.0
    app_id: str = "citybrain-streams"
    max_future_skew_s: float = 300.0
    rules: RuleSet = field(default_factory=lambda: RuleSet(()))
    store_batch_rows: int = 10000
    retention_days: int = 180
    rollup_retention_days: Mapping[str, int | None] = field(default_factory=lambda: dict(DEFAULT_ROLLUP_RETENTION_DAYS))
    maintenance_interval_s: float = 60.0
    compress_after_days: int = 7
    offline_after_cadences: float = 5.0
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig.empty)
    role: str = "all"
    rules_dir: str = ""
    rules_reload_s: float = 10.0
    downstream_views: str = "auto"
    notify: RetryPolicy = field(default_factory=RetryPolicy)
    #: Where notification webhooks may post (SSRF policy; default: public addresses only).
    notify_targets: TargetPolicy = field(default_factory=TargetPolicy)
    notify_interval_s: float = 1.0
    notify_concurrency: int = 16
    dead_letter_retention_days: int = 7
    debug_capture: Capture = Capture.ON_DEMAND
    state_cache_devices: int = 100_000
    #: Kafka client id (the platform puts the pid in it: citybrain.kafka_compat.evict_dead_members).
    client_id: str = "citybrain-worker"

    def __post_init__(self) -> None:
        if self.role not in WORKER_ROLES:
            raise ValueError(f"worker role must be one of {', '.join(WORKER_ROLES)}, got {self.role!r}")


#: Longest a stopping worker lets the batch in hand run on before it cancels it: inside the
#: supervisor's 10 s, with Faust's own few seconds of shutdown after it. A batch can hold
#: 200 gateway records of up to 500 messages each, so finishing it cannot be promised.
STOP_BATCH_WAIT_S = 2.0

#: Allocations between young collections (CPython's default is 700). See :func:`tune_gc`.
GC_YOUNG_THRESHOLD = 1_000_000


def tune_gc() -> None:
    """Collect garbage less often in a worker process: call once at start, before any batch.

    A batch allocates a few containers per reading (decoded payloads, rule and detector
    state documents), nearly all freed by reference counting: a city batch of 2,000
    messages holds up to about 60,000 of them at once and keeps about 40,000 (the state
    documents it wrote). CPython's default thresholds ran a young collection every 700
    allocations and a full one over everything the worker holds (state cache, ledger
    index) every few hundred batches: a fifth of the worker's CPU on city-like traffic
    (``bench.bench_worker``: 1,712 → 2,188 messages per CPU-second). At 100,000 a young
    collection still fell inside most batches, walking and promoting the batch's live
    containers: 12% of the worker's CPU (2,202 → 2,473 at 1,000,000; docs/benchmarks.md).
    Cycles are still collected, only in larger steps.
    """
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 1000)


class BatchLoop:
    """Hands a stream's values to a step a batch at a time, and stops between batches.

    :meth:`stop` takes no further batch and gives the one in hand a moment to
    finish, then cancels it. A cancelled batch is like a crash mid-batch, which
    every step is built for (idempotent store, rule watermarks, alert outbox):
    its values are not acknowledged, so their offsets are not committed and
    whoever consumes the partition next processes them again.
    """

    def __init__(self) -> None:
        self._stopping = False
        self._current: asyncio.Task[object] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(
        self, batches: AsyncIterator[Sequence[bytes]], step: Callable[[Sequence[bytes]], Awaitable[object]]
    ) -> None:
        """Run ``step`` on each batch until the batches end or :meth:`stop` is called."""
        async for values in batches:
            if self._stopping:
                break
            self._current = asyncio.ensure_future(step(values))
            try:
                await self._current
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping and self._current.cancelled() and not (task and task.cancelling()):
                    break  # cancelled by stop(), not the agent itself: end quietly
                raise
            finally:
                self._current = None

    async def stop(self, timeout: float) -> bool:
        """Take no further batch; let the one in hand run up to ``timeout`` s, then cancel it.

        Returns:
            True if no batch was cut short.
        """
        self._stopping = True
        current = self._current
        if current is None:
            return True
        done, _ = await asyncio.wait({current}, timeout=timeout)
        if done:
            return True
        log.warning(
            "stopping: the batch in hand is cancelled after %.0fs; its records will be processed again", timeout
        )
        current.cancel()
        await asyncio.wait({current}, timeout=timeout)
        return False


def create_app(cfg: WorkerConfig, registry: CollectorRegistry, models: ModelRegistry) -> faust.App:
    """Build the Faust app with its topics, agents, timers and /metrics page for ``cfg.role``."""
    ingest = cfg.role in ("all", "ingest")
    alerting = cfg.role in ("all", "alerts")
    # An alerts worker reads other topics than the ingest workers: its own consumer group.
    app_id = f"{cfg.app_id}-alerts" if cfg.role == "alerts" else cfg.app_id
    app = faust.App(
        app_id,
        broker=[f"kafka://{h}" for h in cfg.kafka_bootstrap.split(",")],
        broker_client_id=cfg.client_id,
        store="memory://",
        datadir=cfg.data_dir,
        web_bind=cfg.web_host,
        web_port=cfg.web_port,
        web_host=cfg.web_host,
        topic_partitions=cfg.partitions,
        topic_allow_declare=True,
        topic_disable_leader=True,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        # A worker stuck longer than this leaves the group and its partitions move on.
        broker_max_poll_interval=60.0,
        broker_rebalance_timeout=20.0,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # On stop, finish the batch in hand, not every record fetched ahead (module docstring).
        stream_wait_empty=False,
        producer_acks=-1,
        web_enabled=True,
    )
    raw = app.topic(
        cfg.topics.raw,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=cfg.partitions,
    )
    readings = app.topic(
        *sorted({cfg.topics.readings(m.device_class) for m in models.all()}),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=cfg.partitions,
    )
    alerts_topic = app.topic(
        cfg.topics.alerts, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    deadletter = app.topic(
        cfg.topics.deadletter, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    notify_metrics = NotificationMetrics(registry) if alerting else None
    state: dict[str, Any] = {}
    ready = asyncio.Event()
    loop = BatchLoop()

    async def publish(
        topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> object:
        # The future of the record's metadata: the alert outbox reads partition and offset from it.
        return await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=list(headers or []))

    async def alerts_end_offsets(partitions: list[int]) -> dict[int, int]:
        tps = [TP(cfg.topics.alerts, p) for p in partitions]
        try:
            ends = await app.consumer.highwaters(*tps)
        except Exception as exc:  # Kafka away: checked again at the next tick
            log.warning("alerts topic end offsets unavailable: %s", exc)
            return {}
        return {tp.partition: int(off) for tp, off in ends.items() if off is not None}

    @app.task
    async def _start() -> None:
        pool = AsyncConnectionPool(
            cfg.database_url,
            min_size=1,
            max_size=cfg.pool_size,
            # A backend's catalog/plan caches grow with each partition it touches (event time
            # moves through them) and are freed only when it ends: recycle connections.
            max_lifetime=cfg.pool_max_lifetime_s,
            open=False,
            check=AsyncConnectionPool.check_connection,  # survive a database restart
        )
        await pool.open(wait=True, timeout=30)
        metrics = PipelineMetrics(registry)
        store = ReadingStore(
            pool,
            models,
            StoreMetrics(registry),
            StoreConfig(batch_rows=cfg.store_batch_rows),
        )
        pipe = Pipeline(
            PipelineConfig(
                topics=cfg.topics,
                rules=cfg.rules,
                max_future_skew=timedelta(seconds=cfg.max_future_skew_s),
                anomaly=cfg.anomaly,
                evaluate=cfg.role == "all",
                downstream_views=cfg.downstream_views,
                debug_capture=cfg.debug_capture,
                state_cache_devices=cfg.state_cache_devices,
                retention_days=cfg.retention_days,
            ),
            pool,
            models,
            publish,
            metrics,
            store,
            flush_producer=app.producer.flush,
            alerts_end_offsets=alerts_end_offsets,
        )
        await pipe.refresh_index(force=True)
        if alerting:
            # Transitions a previous worker committed but did not get to publish.
            await pipe.drain_outbox()
        state["pool"] = pool
        state["pipeline"] = pipe
        if alerting and notify_metrics is not None:
            # Outbound notification webhooks: enqueued from the alerts topic, sent by the dispatcher.
            # The connector's resolver keeps only allowed addresses: the send-time check and the
            # connection resolve separately, and a name re-pointed in between must not get through.
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PolicyResolver(cfg.notify_targets)))
            # A claim outlives the longest attempt series, so no other worker sends the delivery meanwhile.
            notifications = NotificationStore(pool, notify_metrics, lease_s=cfg.notify.worst_case_s + 60.0)
            state["http"] = http
            state["notifications"] = notifications
            state["dispatcher"] = Dispatcher(
                notifications,
                WebhookSender(http, cfg.notify, notify_metrics, targets=cfg.notify_targets),
                cfg.notify_concurrency,
            )
        # What start-up built (models, rules, the ledger index) lives as long as the process:
        # out of every later collection's way.
        gc.freeze()
        ready.set()
        log.info("stream worker (role %s) ready: %d devices in the index, %s", cfg.role, len(pipe.index), since_start())

    async def in_batches(
        stream: faust.StreamT[bytes], step: Callable[[Pipeline, Sequence[bytes]], Awaitable[object]]
    ) -> None:
        # Once the pipeline is ready, hand it the stream's values a batch at a time.
        await ready.wait()
        pipe: Pipeline = state["pipeline"]
        first = True

        async def run_step(values: Sequence[bytes]) -> object:
            nonlocal first
            done = await step(pipe, values)
            if first:
                first = False
                log.info("first batch (%d records) processed, %s", len(values), since_start())
            return done

        await loop.run(stream.take(cfg.batch_max, within=cfg.batch_within_s), run_step)

    if ingest:

        @app.agent(raw, name="normalise")
        async def normalise_agent(stream: faust.StreamT[bytes]) -> None:
            await in_batches(stream, Pipeline.process)

    else:

        @app.agent(readings, name="alerts")
        async def alerts_agent(stream: faust.StreamT[bytes]) -> None:
            await in_batches(stream, Pipeline.process_readings)

    if alerting:

        @app.agent(alerts_topic, name="notify")
        async def notify_agent(stream: faust.StreamT[bytes]) -> None:
            # At least once: the offset moves on only after the deliveries are enqueued
            # (idempotently, so a re-read after a crash enqueues nothing twice).
            await ready.wait()
            store: NotificationStore = state["notifications"]
            async for values in stream.take(cfg.batch_max, within=cfg.batch_within_s):
                docs = parse_transitions(values)
                while True:
                    try:
                        await store.enqueue(docs)
                        break
                    except psycopg.OperationalError as exc:
                        log.error("notification enqueue failed, retrying: %s", exc)
                        await asyncio.sleep(1.0)

        @app.timer(interval=cfg.notify_interval_s)
        async def _notify() -> None:
            if not ready.is_set() or loop.stopping:
                return
            try:
                await state["dispatcher"].tick()
            except psycopg.OperationalError as exc:
                log.warning("notification dispatch skipped, database unavailable: %s", exc)

    if ingest:

        @app.agent(deadletter, name="deadletters")
        async def deadletter_agent(stream: faust.StreamT[bytes]) -> None:
            # The debug view's copy of the dead-letter topic, keyed by (topic, partition, offset).
            await ready.wait()
            async for event in stream.events():
                msg = event.message
                headers = msg.headers.items() if isinstance(msg.headers, Mapping) else (msg.headers or [])
                rec = DeadLetter(
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    event.value if isinstance(event.value, bytes) else b"",
                    tuple((str(k), bytes(v or b"")) for k, v in headers),
                )
                while True:
                    try:
                        async with state["pool"].connection() as conn:
                            await record_dead_letters(conn, [rec])
                        break
                    except psycopg.OperationalError as exc:
                        log.error("dead letter copy failed, retrying: %s", exc)
                        await asyncio.sleep(1.0)

    @app.timer(interval=cfg.maintenance_interval_s)
    async def _maintain() -> None:
        # Partitions ahead, rollup refresh, retention; one worker at a time (advisory lock inside).
        if not ready.is_set() or not ingest or loop.stopping:
            return
        try:
            async with state["pool"].connection() as conn:
                await maintenance(
                    conn,
                    models,
                    datetime.now(UTC),
                    cfg.retention_days,
                    compress_after_days=cfg.compress_after_days,
                    rollup_retention_days=cfg.rollup_retention_days,
                )
                await prune_dead_letters(conn, datetime.now(UTC), cfg.dead_letter_retention_days)
                await prune_captures(conn, datetime.now(UTC))
        except (MaintenanceError, psycopg.OperationalError) as exc:
            log.error("maintenance failed (the next run retries): %s", exc)

    rule_files = RuleDirectory(Path(cfg.rules_dir)) if cfg.rules_dir and cfg.rules_reload_s > 0 else None
    reloads = Counter("citybrain_rules_reloads_total", "Rule hot reloads by result", ["result"], registry=registry)

    @app.timer(interval=cfg.rules_reload_s if cfg.rules_reload_s > 0 else 3600.0)
    async def _reload_rules() -> None:
        # Rules are data: an edited YAML file takes effect without a restart.
        if rule_files is None or not ready.is_set() or not alerting:
            return
        try:
            rules = await asyncio.to_thread(rule_files.poll)
        except RuleError as exc:
            reloads.labels("invalid").inc()
            log.error("rules in %s not reloaded, keeping the %d loaded: %s", cfg.rules_dir, len(cfg.rules.rules), exc)
            return
        if rules is not None:
            state["pipeline"].replace_rules(rules)
            reloads.labels("loaded").inc()
            log.info("reloaded %d rules from %s", len(rules.rules), cfg.rules_dir)

    @app.timer(interval=15.0)
    async def _liveness() -> None:
        # Stale vs offline detection (issue: "wrong offline state" in the platforms users left).
        if not ready.is_set() or not alerting or loop.stopping:
            return
        pipe: Pipeline = state["pipeline"]
        try:
            await check_liveness(
                state["pool"], models, pipe.alerts, datetime.now(UTC), LivenessConfig(k=cfg.offline_after_cadences)
            )
        except psycopg.OperationalError as exc:
            log.warning("liveness check skipped, database unavailable: %s", exc)
            return
        # Every tick, not only after a change: it also republishes what a crashed broker lost.
        await pipe.drain_outbox()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # as on_before_shutdown below
    async def _assigned(app_: Any, assigned: Any = (), **kwargs: Any) -> None:
        log.info("partitions assigned: %d, %s", len(assigned), since_start())

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        ok = ready.is_set()
        return web.json({"status": "ok" if ok else "starting"}, status=200 if ok else 503)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode's signal stubs are narrower than its runtime
    async def _close(app_: Any, *args: Any, **kwargs: Any) -> None:
        # Sent after the consumer stopped fetching, before the agents are cancelled:
        # the batch in hand finishes (and is acknowledged) with its pool still open.
        await loop.stop(STOP_BATCH_WAIT_S)
        # Deliveries in flight are cut short: their leases expire and they are claimed again.
        dispatcher = state.get("dispatcher")
        if dispatcher is not None:
            await dispatcher.close()
        http = state.get("http")
        if http is not None:
            await http.close()
        pool = state.get("pool")
        if pool is not None:
            await pool.close()

    return app
