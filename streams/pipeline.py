"""What a stream worker does with one batch of raw Kafka records.

The Faust agent in :mod:`streams.app` is a few lines that call
:meth:`Pipeline.process`. Everything here takes its dependencies as
arguments (pool, index, publisher, metrics), so it is tested without a broker.

Order of effects for a batch, chosen so that a crash at any point loses
nothing and a replay duplicates nothing:

1. decode + normalise (pure);
2. write rows to PostgreSQL (idempotent merge), retried until it succeeds —
   while it fails the agent does not advance, so Kafka offsets are not
   committed and lag grows visibly;
3. publish rejects to the dead-letter topic, readings to the readings topics;
4. track mobile devices' positions against the geofences
   (:class:`alerts.geofence.GeofenceHook`: ``geofence.*`` enter/leave alerts and
   the membership fence-scoped rules use), then evaluate rules
   (:mod:`alerts.engine`) and anomaly detectors (:mod:`alerts.anomaly.stream`)
   with each device's state read from ``rule_state`` and ``anomaly_state`` and
   written back in the same transaction as the alerts it produced; a replayed
   batch is below the device's watermarks and changes nothing, and only
   transitions that changed a row are published, so a restart neither loses
   nor repeats an alert. Clock-skewed readings (future event time) are stored
   but evaluated by nothing, so they never move a watermark; values outside
   the model's physical range reach the detectors, not the rules.

The pipeline orchestrates; the tables are written beside it:
:mod:`streams.store` (readings), :mod:`streams.liveness` (``device_liveness``,
``device_sessions``), :mod:`streams.state` (``rule_state``, ``anomaly_state``,
maintenance windows, drift peers), :mod:`streams.outbox` (``alert_outbox``),
:mod:`alerts.store` (alerts) and :mod:`devices.ledger` (activation). Waiting out
PostgreSQL is :func:`core.retry.retrying`.

Worker roles (``CITYBRAIN_WORKER_ROLE``): ``all`` does 1–4; ``ingest`` does
1–3 (``PipelineConfig.evaluate`` off); ``alerts`` consumes the readings topics
and runs only step 4 (:meth:`Pipeline.process_readings`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly.config import AnomalyConfig
from alerts.anomaly.stream import DetectorMemory, SeriesDevice, evaluate_anomalies
from alerts.engine import DeviceContext, evaluate_device, suppressed_flag
from alerts.geofence import GeofenceHook
from alerts.rules import RuleSet, unknown_models
from alerts.store import AlertStore, GroupPolicy
from core.jsonio import dumps
from core.records import Alert, Quality, RawMessage, Reading, RecordError, epoch_us
from core.retry import retrying
from core.topics import KafkaTopics
from devices.grades import masker_for
from devices.index import DeviceInfo
from devices.ledger import IndexFeed, Ledger
from devices.models import ModelError, ModelRegistry
from ingest.batch import dead_letter_headers, decode_batch
from ingest.errors import DecodeError
from streams.debug import Capture, CaptureSet, record_recent
from streams.downstream import plan_views
from streams.liveness import record_seen, record_sessions
from streams.normalise import Normalised, Reject, normalise
from streams.outbox import drain_outbox, write_outbox
from streams.retention import retention_cutoff
from streams.state import (
    MaintenanceWindow,
    RuleState,
    StateCache,
    active_maintenance_windows,
    lock_anomaly_state,
    lock_rule_state,
    peer_medians,
    save_anomaly_state,
    save_rule_state,
)
from streams.store import ReadingStore, StoreError, Unplaced

__all__ = ["Pipeline", "PipelineConfig", "PipelineMetrics", "Publisher", "clock_skewed", "out_of_range"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Sends one record to Kafka; returns once the send is queued."""

    def __call__(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> Awaitable[object]: ...


_UNKNOWN_RELOAD_S = 1.0


class PipelineMetrics:
    """Stream worker metrics, on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("citybrain_stream_records_total", "Raw Kafka records processed", registry=registry)
        self.messages = Counter("citybrain_stream_messages_total", "Raw messages processed", registry=registry)
        self.readings = Counter(
            "citybrain_stream_readings_total", "Readings normalised", ["device_class"], registry=registry
        )
        self.debug_captured = Gauge(
            "citybrain_stream_debug_captured_devices",
            "Devices whose raw messages the debug ring records (on_demand: current captures; -1: all)",
            registry=registry,
        )
        self.debug_recorded = Counter(
            "citybrain_stream_debug_recorded_total", "Raw messages written to the debug ring", registry=registry
        )
        self.last_event = Gauge(
            "citybrain_stream_last_event_timestamp_seconds",
            "Newest reading event time per district and device class (Unix s, capped at now)",
            ["district", "device_class"],
            registry=registry,
        )
        self.rejected = Counter(
            "citybrain_stream_rejected_total", "Messages dead-lettered by reason", ["reason"], registry=registry
        )
        self.batch_seconds = Histogram(
            "citybrain_stream_batch_seconds",
            "Time to process one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.rule_seconds = Histogram(
            "citybrain_rule_evaluation_seconds",
            "Rule evaluation time per batch",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
            registry=registry,
        )
        self.alerts = Counter("citybrain_alerts_total", "Alert transitions", ["rule", "transition"], registry=registry)
        self.alert_latency = Histogram(
            "citybrain_alert_latency_seconds",
            "From the triggering reading's event time to the alert being stored",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.store_retries = Counter("citybrain_stream_store_retries_total", "Store writes retried", registry=registry)
        self.suppressed = Counter(
            "citybrain_rule_suppressed_readings_total",
            "Readings not evaluated (maintenance window)",
            registry=registry,
        )
        self.anomaly_seconds = Histogram(
            "citybrain_anomaly_evaluation_seconds",
            "Anomaly detector evaluation time per batch",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
            registry=registry,
        )
        self.anomaly_samples = Counter(
            "citybrain_anomaly_samples_total", "Samples fed to anomaly detectors", registry=registry
        )
        self.skew = Counter(
            "citybrain_stream_clock_skew_total", "Readings flagged for future event time", registry=registry
        )
        self.derive_errors = Counter(
            "citybrain_derived_indicator_errors_total",
            "Evaluations whose derived indicators (AQI, water class …) could not be computed",
            ["device_class"],
            registry=registry,
        )
        self.not_evaluated = Counter(
            "citybrain_rule_skipped_readings_total",
            "Stored readings kept from rules (clock_skew, out_of_range) or from rules and detectors (clock_skew)",
            ["reason"],
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Typed worker settings."""

    topics: KafkaTopics
    max_future_skew: timedelta = timedelta(minutes=5)
    rules: RuleSet = field(default_factory=lambda: RuleSet(()))
    index_refresh_s: float = 2.0
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig.empty)
    #: Evaluate rules and detectors inline after storing (roles ``all``); off for role ``ingest``.
    evaluate: bool = True
    peer_refresh_s: float = 60.0
    #: Graded Kafka views ``readings.{class}.public|internal`` (streams.downstream.plan_views):
    #: ``auto`` only for classes with non-public metrics, ``all`` for every class, ``off`` none.
    downstream_views: str = "auto"
    #: Whose last raw messages the debug view's ring keeps (streams.debug.Capture,
    #: ``CITYBRAIN_DEBUG_CAPTURE``): devices being debugged, every device, or none.
    debug_capture: Capture = Capture.ON_DEMAND
    #: How often the worker re-reads which devices are being debugged (``on_demand``).
    debug_refresh_s: float = 2.0
    #: Raw readings are kept this many whole UTC days (``CITYBRAIN_RETENTION_DAYS``); an older
    #: reading is dead-lettered ``beyond_retention`` instead of stored (None: no limit).
    retention_days: int | None = None
    #: Devices whose rule and detector state the worker keeps in memory between batches
    #: (streams.state.StateCache, each of the two; ``CITYBRAIN_STATE_CACHE_DEVICES``; 0: none).
    state_cache_devices: int = 100_000


class Pipeline:
    """Normalise, store, republish and evaluate rules for batches of raw records."""

    def __init__(
        self,
        cfg: PipelineConfig,
        pool: AsyncConnectionPool,
        models: ModelRegistry,
        publish: Publisher,
        metrics: PipelineMetrics,
        store: ReadingStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        flush_producer: Callable[[], Awaitable[None]] | None = None,
        alerts_end_offsets: Callable[[list[int]], Awaitable[dict[int, int]]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.models = models
        self.publish = publish
        self.metrics = metrics
        self.store = store
        self.ledger = Ledger(pool, models)
        self.alerts = AlertStore(pool)
        self.geofences = GeofenceHook(pool)
        # Fixed for the worker's life (models and setting do not change): built once, not per batch.
        self._views = plan_views(models, cfg.downstream_views)
        self._masker = masker_for(models)
        # Bounded by districts × classes; feeds the "no data from a district" Prometheus alert.
        self._last_event: dict[tuple[str, str], float] = {}
        self._feed = IndexFeed(pool)
        self.index = self._feed.index
        self._index_loaded = 0.0
        self._clock = clock
        self.flush_producer: Callable[[], Awaitable[None]] = flush_producer or _no_flush
        self._mw: list[MaintenanceWindow] = []
        self._mw_loaded = -1e9
        self._peers: dict[tuple[str, str, str], float] = {}
        self._peers_loaded = -1e9
        self.replace_rules(cfg.rules)
        # Highest offset Kafka acknowledged per alerts-topic partition (streams.outbox.drain_outbox).
        self._outbox_acked: dict[int, int] = {}
        self._alerts_end_offsets = alerts_end_offsets
        self.rule_cache = StateCache(cfg.state_cache_devices)
        self.anomaly_cache = StateCache(cfg.state_cache_devices)
        # The detectors' banks between batches (rows reused while the cached documents are the
        # ones they wrote): useless without the document cache, and bounded like it.
        self.detector_memory = (
            DetectorMemory(max_series=cfg.state_cache_devices * 8) if cfg.state_cache_devices else None
        )
        self.captures = CaptureSet(cfg.debug_capture, cfg.debug_refresh_s)
        if cfg.debug_capture is Capture.ALL:
            metrics.debug_captured.set(-1)  # fixed for the worker's life

    def replace_rules(self, rules: RuleSet) -> None:
        """Evaluate with ``rules`` from the next batch on (hot reload).

        Rule state is keyed by rule id, so an unchanged rule keeps its open alerts
        and hysteresis; a new rule starts from nothing; a removed rule's open alerts
        stay open for an operator (nothing evaluates them any more).
        """
        self.cfg = dataclasses.replace(self.cfg, rules=rules)
        self._groups = {
            r.id: GroupPolicy(r.group_min_devices, timedelta(seconds=r.group_window_s)) for r in rules.rules
        }
        for rule_id, model in unknown_models(rules, (m.id for m in self.models.latest())):
            log.warning(
                "rule %s is scoped to model %r, which no registered model is: it applies to no device", rule_id, model
            )

    async def refresh_index(self, force: bool = False) -> None:
        """Bring the ledger index up to date when it is older than ``index_refresh_s`` (or ``force``).

        The first call reads the whole ledger; later ones read only the devices
        changed since (:class:`devices.ledger.IndexFeed`), so a refresh costs time
        in proportion to the changes, not to the size of the ledger.
        """
        now = time.monotonic()
        if force or now - self._index_loaded > self.cfg.index_refresh_s:
            await self._feed.refresh()
            self.index = self._feed.index
            self._index_loaded = now

    async def _reload_for_unknown(self, messages: Sequence[RawMessage]) -> None:
        # A device registered a moment ago (an integrator's import, then the devices
        # connect at once) is not in an index loaded before it: reload before
        # dead-lettering its first messages as unknown. At most once a second, so a
        # stream of junk codes cannot turn every batch into a ledger scan.
        if time.monotonic() - self._index_loaded < _UNKNOWN_RELOAD_S:
            return
        if any(m.device_code is not None and self.index.get(m.device_code) is None for m in messages):
            await self.refresh_index(force=True)

    async def process(self, values: Sequence[bytes]) -> Normalised:
        """Process one batch of raw-topic record values.

        While PostgreSQL is unreachable the batch is retried with backoff, never
        skipped: the agent stops advancing, Kafka offsets stay uncommitted and
        the lag shows it. Every step is idempotent, so a retried batch stores
        nothing twice and (through the rule watermark) raises no alert twice.
        """
        retry = retrying(
            psycopg.OperationalError, what="database unavailable for the batch", log=log, on_retry=self._count_retry
        )
        return await retry(self._process, values)

    def _count_retry(self, exc: BaseException) -> None:
        self.metrics.store_retries.inc()

    async def _process(self, values: Sequence[bytes]) -> Normalised:
        t0 = time.perf_counter()
        await self.refresh_index()
        messages: list[RawMessage] = []
        for value in values:
            try:
                messages.extend(decode_batch(value))
            except DecodeError as exc:
                self.metrics.rejected.labels(exc.reason).inc()
                log.error("undecodable raw record (%s); dead-lettered", exc)
                await self.publish(
                    self.cfg.topics.deadletter,
                    None,
                    value,
                    dead_letter_headers(exc.reason, exc.detail, self.cfg.topics.raw, None, "stream-worker"),
                )
        self.metrics.records.inc(len(values))
        self.metrics.messages.inc(len(messages))
        await self._reload_for_unknown(messages)
        now = self._clock()
        result = normalise(
            messages,
            self.index,
            self.models,
            now=now,
            max_future_skew=self.cfg.max_future_skew,
            oldest=self.retention_start(now),
        )
        if result.rows:
            for device_class, rows in result.rows.items():
                self.store.add(device_class, rows.values())
            await self._flush_with_retry()
            unplaced = self.store.take_unplaced()
            if unplaced:
                self._set_aside(result, unplaced)
        await self._after_store(result)
        if messages:
            await self._capture(messages, result, now)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        return result

    async def _capture(self, messages: Sequence[RawMessage], result: Normalised, now: datetime) -> None:
        """The debug view's ring: the newest message of each captured device in the batch."""
        captures = self.captures
        if captures.stale():
            async with self.pool.connection() as conn:
                await captures.refresh(conn, now)
            self.metrics.debug_captured.set(len(captures.codes))
        captured = captures.select(messages)
        if not captured:
            return
        codes = captures.codes if captures.mode is Capture.ON_DEMAND else None
        async with self.pool.connection() as conn:
            written = await record_recent(
                conn,
                captured,
                (r for r, _ in result.readings if codes is None or r.device_code in codes),
                ((rej.raw, rej.reason, rej.detail) for rej in result.rejects),
            )
        self.metrics.debug_recorded.inc(written)

    def retention_start(self, now: datetime) -> datetime | None:
        """The earliest event time stored: the start of the first UTC day maintenance keeps."""
        if self.cfg.retention_days is None:
            return None
        day = retention_cutoff(now, self.cfg.retention_days)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    async def _flush_with_retry(self) -> None:
        await retrying(StoreError, what="store write failed", log=log, on_retry=self._count_retry)(self.store.flush)

    def _set_aside(self, result: Normalised, unplaced: Sequence[Unplaced]) -> None:
        """Rows the database refused (the rest of the batch is stored): their messages are dead-lettered.

        Their readings are taken out of the batch, so neither the readings topics
        nor the rules see a reading that is not stored.
        """
        by_key = {(u.row.device_code, epoch_us(u.row.event_time)): u for u in unplaced}
        for raw, key in result.messages_of(set(by_key)):
            u = by_key[key]
            result.rejects.append(
                Reject(
                    raw,
                    u.reason,
                    f"{u.device_class} row of {u.row.device_code} at {_iso(u.row.event_time)} refused by the"
                    f" database: {u.detail}",
                )
            )
        result.readings = [
            (r, dev) for r, dev in result.readings if (r.device_code, epoch_us(r.event_time)) not in by_key
        ]
        result.skewed = [r for r in result.skewed if (r.device_code, epoch_us(r.event_time)) not in by_key]

    async def _after_store(self, result: Normalised) -> None:
        for rej in result.rejects:
            await self._dead_letter(rej)
        if result.skewed:
            self.metrics.skew.inc(len(result.skewed))
            for r in result.skewed[:10]:
                log.warning("clock skew: device %s sent %s event time %s", r.device_code, r.metric, r.event_time)
        if result.first_seen:
            n = await self.ledger.activate(result.first_seen)
            if n:
                log.info("activated %d device(s) on their first valid message", n)
                await self.refresh_index(force=True)
        if result.seen:
            await record_seen(self.pool, result.seen)
        if result.status:
            await record_sessions(self.pool, result.status)
        await self._publish_readings(result)
        if self.cfg.evaluate:
            await self.evaluate(result.readings, skewed=result.skewed)

    async def _dead_letter(self, rej: Reject) -> None:
        self.metrics.rejected.labels(rej.reason).inc()
        log.warning(
            "dead-letter %s: device %s topic %s: %s", rej.reason, rej.raw.device_code, rej.raw.topic, rej.detail
        )
        await self.publish(
            self.cfg.topics.deadletter,
            rej.raw.topic.encode()[:200],
            rej.raw.payload,
            dead_letter_headers(rej.reason, rej.detail, rej.raw.topic, rej.raw.received_at, "stream-worker"),
        )

    async def _publish_readings(self, result: Normalised) -> None:
        plan, masker = self._views, self._masker
        now = self._clock().timestamp()
        by_row: dict[tuple[str, int], list[Reading]] = {}
        info: dict[str, DeviceInfo] = {}
        for r, dev in result.readings:
            by_row.setdefault((r.device_code, epoch_us(r.event_time)), []).append(r)
            info[r.device_code] = dev
        # Metrics once per batch, not per row (labelled lookups per row were a visible share).
        per_class: dict[str, int] = {}
        last_event, moved = self._last_event, set[tuple[str, str]]()
        try:
            for (code, _), readings in by_row.items():
                dev = info[code]
                first = readings[0]
                doc = {
                    "v": 1,
                    "device": code,
                    "district": dev.district,
                    "class": dev.device_class,
                    "model": dev.model,
                    "grid": dev.grid,
                    "ts": _iso(first.event_time),
                    "rx": _iso(first.received_at),
                    "readings": [
                        {"metric": r.metric, "value": r.value, "unit": r.unit, "quality": r.quality.value}
                        | ({"flag": r.flag} if r.flag else {})
                        for r in readings
                    ],
                }
                per_class[dev.device_class] = per_class.get(dev.device_class, 0) + len(readings)
                # Capped at now: one device with a fast clock must not keep a silent district looking alive.
                seen = min(first.event_time.timestamp(), now)
                key = (dev.district, dev.device_class)
                if seen > last_event.get(key, 0.0):
                    last_event[key] = seen
                    moved.add(key)
                value = dumps(doc)
                await self.publish(self.cfg.topics.readings(dev.device_class), code.encode(), value)
                # Masked views by data grade (docs/security.md), only for classes that need them.
                for grade in plan.grades(dev.device_class):
                    view = masker.view(doc, grade)
                    if view is not None:
                        await self.publish(
                            self.cfg.topics.readings_view(dev.device_class, grade),
                            code.encode(),
                            value if view is doc else dumps(view),
                        )
        finally:
            # Also when a send failed: what was published so far is counted, and the gauge follows the map.
            for device_class, n in per_class.items():
                self.metrics.readings.labels(device_class).inc(n)
            for key in moved:
                self.metrics.last_event.labels(*key).set(last_event[key])

    async def process_readings(self, values: Sequence[bytes]) -> int:
        """Evaluate rules and detectors over records of the readings topics (role ``alerts``).

        The ingest workers already normalised and stored these readings; this
        only rebuilds them (device details from the ledger index) and runs
        :meth:`evaluate`. Retried like :meth:`process` while PostgreSQL is down.

        Returns:
            Readings evaluated.
        """
        retry = retrying(
            psycopg.OperationalError,
            what="database unavailable for the readings batch",
            log=log,
            on_retry=self._count_retry,
        )
        return await retry(self._process_readings, values)

    async def _process_readings(self, values: Sequence[bytes]) -> int:
        await self.refresh_index()
        docs = _parse_readings(values)
        if any(self.index.get(doc["device"]) is None for doc in docs):
            # The ingest worker knew the device, so this index is older than it: reload once.
            await self.refresh_index(force=True)
        readings = self._decode_readings(docs)
        await self.evaluate(readings)
        return len(readings)

    def _decode_readings(self, docs: Sequence[dict[str, Any]]) -> list[tuple[Reading, DeviceInfo]]:
        out: list[tuple[Reading, DeviceInfo]] = []
        for doc in docs:
            code = doc["device"]
            dev = self.index.get(code)
            if dev is None:
                log.warning("readings of device %s (topic readings.%s) not in the ledger; skipped", code, doc["class"])
                continue
            for item in doc["readings"]:
                try:
                    out.append(
                        (
                            Reading(
                                code,
                                item["metric"],
                                doc["ts"],
                                doc["rx"],
                                float(item["value"]),
                                item["unit"],
                                Quality(item.get("quality", "good")),
                                item.get("flag"),
                            ),
                            dev,
                        )
                    )
                except (RecordError, ValueError, KeyError, TypeError) as exc:
                    log.error("device %s: bad reading in a readings record skipped: %s", code, exc)
        return out

    async def evaluate(
        self, readings: Sequence[tuple[Reading, DeviceInfo]], *, skewed: Sequence[Reading] = ()
    ) -> list[tuple[str, Alert]]:
        """Geofence tracking, rules and anomaly detectors over a batch's readings, in one transaction.

        Each device's rule state (``rule_state``) and detector state
        (``anomaly_state``) is locked, advanced and written back in the same
        transaction as the alerts and outbox rows it produced; a replayed batch
        is below the watermarks and changes nothing. Positions (``lon``/``lat``)
        first move mobile devices' fence membership (``geofence.*`` enter/leave
        alerts), so the rules see where the device is now; fixed devices are in
        the fences of their registered location (:class:`alerts.geofence.GeofenceHook`).

        Readings with a future event time (:func:`clock_skewed`) are stored but
        reach nothing here, so they never move a watermark; ``suspect`` readings
        outside the model's physical range (:func:`out_of_range`) reach the
        detectors only, not the rules.

        Args:
            readings: The batch's ``(reading, device)`` pairs.
            skewed: Readings normalisation flagged for clock skew (excluded even
                if :func:`clock_skewed` would now accept them).

        Returns:
            The alert transitions that changed a row.
        """
        rules, anomaly = self.cfg.rules, self.cfg.anomaly
        if not readings:
            return []
        now, flagged = self._clock(), {id(r) for r in skewed}
        usable = [
            (r, dev)
            for r, dev in readings
            if id(r) not in flagged and not clock_skewed(r, now=now, max_future_skew=self.cfg.max_future_skew)
        ]
        if len(usable) < len(readings):
            self.metrics.not_evaluated.labels("clock_skew").inc(len(readings) - len(usable))
        # Without rules or detectors only mobile devices' positions need the transaction.
        if not usable or not (len(rules) or anomaly or any(r.metric in _POSITION_METRICS for r, _ in usable)):
            return []
        t0 = time.perf_counter()
        per_device: dict[str, list[Reading]] = {}
        info: dict[str, DeviceInfo] = {}
        for r, dev in usable:
            per_device.setdefault(r.device_code, []).append(r)
            info[r.device_code] = dev
        windows = await self._maintenance()
        codes = []
        for code in sorted(per_device):
            if _in_maintenance(windows, info[code]):
                self.metrics.suppressed.inc(len(per_device[code]))
            else:
                codes.append(code)
        peers = await self._peer_medians() if anomaly else {}
        transitions: list[tuple[str, Alert]] = []
        try:
            changed = await self._evaluate_in_transaction(codes, per_device, info, peers, usable, transitions, t0)
        except BaseException:
            # Evaluation advanced the cached states in place; without the commit they are not the rows'.
            self.rule_cache.forget(codes)
            self.anomaly_cache.forget(codes)
            raise
        now = self._clock()
        for kind, alert in changed:
            self.metrics.alerts.labels(alert.rule, kind).inc()
            if kind == "open":
                self.metrics.alert_latency.observe(max(0.0, (now - alert.opened_at).total_seconds()))
            log.info(
                "alert %s %s device %s district %s severity %s metric %s",
                alert.rule,
                kind,
                alert.device_code,
                alert.district,
                alert.severity.label,
                alert.metric,
            )
        if changed:
            await self.drain_outbox()
        return changed

    async def _evaluate_in_transaction(
        self,
        codes: list[str],
        per_device: dict[str, list[Reading]],
        info: dict[str, DeviceInfo],
        peers: dict[tuple[str, str, str], float],
        usable: list[tuple[Reading, DeviceInfo]],
        transitions: list[tuple[str, Alert]],
        t0: float,
    ) -> list[tuple[str, Alert]]:
        """Fences, rules, detectors, alerts, state and outbox of one batch, in one transaction."""
        rules, anomaly = self.cfg.rules, self.cfg.anomaly
        async with self.pool.connection() as conn, conn.transaction():
            # Fences first (refreshing membership too): the rules below see this batch's positions.
            # Every device is tracked, in a maintenance window or not: where it is is a fact.
            transitions += await self.geofences.track(conn, usable)
            rule_updates = await self._rule_step(conn, codes, per_device, info, transitions) if len(rules) else []
            t1 = time.perf_counter()
            self.metrics.rule_seconds.observe(t1 - t0)
            anomaly_states, anomaly_changed = (
                await self._anomaly_step(conn, codes, per_device, info, peers, transitions) if anomaly else ({}, set())
            )
            self.metrics.anomaly_seconds.observe(time.perf_counter() - t1)
            changed = await self.alerts.apply(conn, transitions, self._groups) if transitions else []
            await save_rule_state(conn, rule_updates, self.rule_cache)
            await save_anomaly_state(conn, anomaly_states, anomaly_changed, self.anomaly_cache)
            await write_outbox(conn, changed)
        return changed

    async def _rule_step(
        self,
        conn: psycopg.AsyncConnection,
        codes: list[str],
        per_device: dict[str, list[Reading]],
        info: dict[str, DeviceInfo],
        transitions: list[tuple[str, Alert]],
    ) -> list[tuple[str, RuleState]]:
        saved = await lock_rule_state(conn, codes, self.rule_cache)
        updates: list[tuple[str, RuleState]] = []
        faults = 0
        for code in codes:
            dev = info[code]
            wm, snap, states = saved.get(code, (0, {}, {}))
            ctx = DeviceContext(
                code,
                dev.district,
                dev.device_class,
                fences=self.geofences.keys(code),
                attributes=dev.attributes,
                model=dev.model,
            )
            # A value outside the physical range is a sensor fault (the detectors' business), not a level.
            readings = [r for r in per_device[code] if not out_of_range(r, dev, self.models)]
            faults += len(per_device[code]) - len(readings)
            out, new_wm = evaluate_device(
                self.cfg.rules.for_class(dev.device_class),
                readings,
                ctx,
                snap,
                states,
                wm,
                on_derive_error=self._derive_error,
            )
            transitions += [(t.kind, t.alert) for t in out]
            if new_wm != wm:
                updates.append((code, (new_wm, snap, states)))
        if faults:
            self.metrics.not_evaluated.labels("out_of_range").inc(faults)
        return updates

    def _derive_error(self, device_class: str, exc: Exception) -> None:
        # evaluate_device has logged it with the device code.
        self.metrics.derive_errors.labels(device_class).inc()

    async def _anomaly_step(
        self,
        conn: psycopg.AsyncConnection,
        codes: list[str],
        per_device: dict[str, list[Reading]],
        info: dict[str, DeviceInfo],
        peers: dict[tuple[str, str, str], float],
        transitions: list[tuple[str, Alert]],
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        states = await lock_anomaly_state(conn, codes, self.anomaly_cache)
        samples = []
        for code in codes:
            dev = info[code]
            series = SeriesDevice(code, dev.district, dev.device_class, dev.model.split("@", 1)[0])
            # Like rules: bad readings and HJ 212 maintenance/calibration flags never reach detectors.
            samples += [
                (series, r.metric, r.event_time, r.value)
                for r in per_device[code]
                if r.quality is not Quality.BAD and not suppressed_flag(r)
            ]
        outcome = evaluate_anomalies(
            self.cfg.anomaly, samples, states, peers=peers, is_gauge=self._is_gauge, memory=self.detector_memory
        )
        self.metrics.anomaly_samples.inc(outcome.samples)
        transitions += outcome.transitions
        return states, set(outcome.changed)

    def _is_gauge(self, dev: SeriesDevice, metric: str) -> bool:
        try:
            m = self.models.get(dev.model_id).metrics.get(metric)
        except ModelError:
            return False
        return m is not None and m.kind == "gauge"

    async def _peer_medians(self) -> dict[tuple[str, str, str], float]:
        """Drift peers (:func:`streams.state.peer_medians`), recomputed at most every ``peer_refresh_s``.

        Drift is slow (hours), so a median up to a minute old is as good as the same timestep's.
        """
        now = time.monotonic()
        if now - self._peers_loaded >= self.cfg.peer_refresh_s:
            self._peers = await peer_medians(self.pool, self.models)
            self._peers_loaded = now
        return self._peers

    async def drain_outbox(self, limit: int = 1000) -> int:
        """Publish committed alert transitions (:func:`streams.outbox.drain_outbox`)."""
        return await drain_outbox(
            self.pool,
            self.publish,
            self.cfg.topics.alerts,
            self.flush_producer,
            limit,
            acked=self._outbox_acked,
            end_offsets=self._alerts_end_offsets,
        )

    async def _maintenance(self) -> list[MaintenanceWindow]:
        now = time.monotonic()
        if now - self._mw_loaded > 10.0:
            self._mw = await active_maintenance_windows(self.pool)
            self._mw_loaded = now
        return self._mw


async def _no_flush() -> None:
    return None


# Metrics that carry a mobile device's position (alerts.geofence.GeofenceHook's defaults).
_POSITION_METRICS = frozenset({"lon", "lat"})


def clock_skewed(r: Reading, *, now: datetime, max_future_skew: timedelta) -> bool:
    """Whether a reading's event time is too far in the future to evaluate (a device clock ahead).

    Judged against the earlier of its receive time and ``now``, so it holds the
    same in an ``alerts`` worker reading the readings topics later as it did
    when normalisation flagged the reading ``suspect`` for skew.
    """
    return r.event_time > min(r.received_at, now) + max_future_skew


def out_of_range(r: Reading, dev: DeviceInfo, models: ModelRegistry) -> bool:
    """Whether a reading is ``suspect`` because its value is outside its model's physical range.

    Such a value (a PM2.5 of 5000) is a sensor fault, not a measurement: rules
    skip it, detectors see it. ``suspect`` for other reasons (an HJ 212 flag
    such as T, clock skew) is not this.
    """
    if r.quality is not Quality.SUSPECT:
        return False
    try:
        m = models.get(dev.model).metrics.get(r.metric)
    except ModelError:
        return False
    return m is not None and not (m.low <= r.value <= m.high)


def _in_maintenance(windows: list[MaintenanceWindow], dev: DeviceInfo) -> bool:
    for district, code, device_class in windows:
        if (
            (district is None or district == dev.district)
            and (code is None or code == dev.code)
            and (device_class is None or device_class == dev.device_class)
        ):
            return True
    return False


def _parse_readings(values: Sequence[bytes]) -> list[dict[str, Any]]:
    """Records of the readings topics (docs/topics.md), with ``ts`` and ``rx`` parsed; bad ones logged and dropped."""
    out = []
    for value in values:
        try:
            doc = json.loads(value)
            doc["ts"] = datetime.fromisoformat(doc["ts"])
            doc["rx"] = datetime.fromisoformat(doc["rx"])
            if not isinstance(doc["device"], str) or not isinstance(doc["readings"], list):
                raise TypeError("device must be a string and readings a list")
            doc.setdefault("class", "?")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("undecodable readings record skipped: %s", exc)
            continue
        out.append(doc)
    return out


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")
