"""The at-least-once MQTT → Kafka gateway, and the Kafka → MQTT downstream bridge.

Uplink path::

    paho thread ──(slot semaphore: bounded)──▶ asyncio deque ──▶ validate
        ──▶ KafkaSink (per-partition batch, acks=all) ──▶ MQTT PUBACK (manual)

* An MQTT QoS 1/2 message is acknowledged only after Kafka acknowledged the
  record its batch went into. If the gateway dies before that, the broker
  redelivers (persistent session), so nothing is lost; duplicates are removed
  by the store's idempotent writes.
* The hand-off from paho's thread is bounded: when ``queue_max`` messages are
  waiting, paho's network thread blocks, the socket stops being read, and the
  broker holds the rest. Nothing is dropped; the wait shows in
  ``citybrain_gateway_backpressure_seconds_total``.
* A malformed message (bad topic, bad code, oversized) goes to the dead-letter
  topic with its reason and original bytes, and is acknowledged after that.
* A flooding device (far above its model's cadence, :mod:`ingest.throttle`) is
  throttled in paho's thread, before the hand-off: its excess messages are
  acknowledged and dropped, counted in ``citybrain_gateway_throttled_total{class}``,
  and reported once per window on the dead-letter topic (reason ``throttled``,
  header ``count``), so it never takes queue slots or batches from other devices.

Downstream bridge: alerts from Kafka are re-published on MQTT
``citybrain/alerts/{district}/{severity}`` and normalised readings, masked by
data grade (:mod:`devices.grades`), on ``citybrain/down/{district}/{class}/{code}``
(public view), ``citybrain/down-internal/…`` and ``citybrain/down-sensitive/…``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.procstat import ThreadCpuCollector
from core.records import RawMessage, Transport
from core.retry import retrying
from core.topics import (
    KafkaTopics,
    TopicError,
    alert_topic,
    downstream_filter,
    downstream_topic,
    parse_uplink,
)
from devices.code import parse as parse_code
from devices.errors import DeviceCodeError
from ingest.errors import GatewayError, SinkError
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics
from ingest.mqtt_tls import MqttTls
from ingest.throttle import DeviceThrottle, FloodReport, FloodTracker, ThrottleConfig, profiles_for, topic_device

__all__ = ["Gateway", "GatewayConfig", "GatewayMetrics", "classify", "run_gateway"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Typed gateway settings (built from :class:`citybrain.settings.Settings`)."""

    mqtt_host: str
    mqtt_port: int
    kafka_bootstrap: str
    topics: KafkaTopics
    partitions: int = 4
    queue_max: int = 20000
    batch_max: int = 500
    batch_max_bytes: int = 900_000
    linger_ms: int = 20
    max_payload_bytes: int = 65536
    shared_group: str = ""
    client_id: str = ""
    #: Kafka client id of the producer and the bridge consumer (default random). The
    #: platform puts the pid in it, so a supervisor can evict a killed gateway's
    #: bridge-group member on a broker that never expires it (citybrain.kafka_compat).
    kafka_client_id: str = ""
    #: Keep a copy of each record Kafka acknowledged this long (0: none). For a broker that
    #: acknowledges before its log is safe (the embedded noida-db): when a later record gets
    #: an offset at or below one it acknowledged, its log went back, and the gateway sends the
    #: copies from that offset on again (the store merges what arrives twice).
    kafka_replay_s: float = 0.0
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls: MqttTls | None = None  # set: connect over TLS (CITYBRAIN_MQTT_TLS_*)
    bridge: bool = True
    bridge_readings: bool = True
    device_classes: tuple[str, ...] = ()
    throttle: ThrottleConfig | None = None  # None: no per-device flood limit
    #: Data grades whose view of the readings the bridge publishes (citybrain/down/…,
    #: citybrain/down-internal/…, citybrain/down-sensitive/…; docs/security.md).
    bridge_grades: tuple[str, ...] = ("public", "internal", "sensitive")
    #: Bridge publishes awaiting their PUBACK before the bridge stops taking records from
    #: Kafka (backpressure). Unbounded, a slow or reconnecting broker let paho's outgoing
    #: queue grow without limit, and paho scans that queue on every acknowledgement, so the
    #: gateway stopped reading uplinks (docs/operations.md).
    bridge_max_inflight: int = 1000
    #: Longest wait for room; past it the outstanding publishes are written off (a broker
    #: that lost the session never acknowledges them) and counted.
    bridge_stall_s: float = 30.0


class GatewayMetrics:
    """The gateway's metrics, registered on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "citybrain_gateway_messages_received_total", "MQTT messages received", ["kind"], registry=registry
        )
        self.forwarded = Counter(
            "citybrain_gateway_messages_forwarded_total", "Messages acknowledged by Kafka", registry=registry
        )
        self.rejected = Counter(
            "citybrain_gateway_messages_rejected_total", "Messages dead-lettered", ["reason"], registry=registry
        )
        self.batches = Counter("citybrain_gateway_batches_total", "Kafka records produced", registry=registry)
        self.batch_size = Histogram(
            "citybrain_gateway_batch_messages",
            "Messages per Kafka record",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "citybrain_gateway_queue_depth", "Messages waiting between paho and asyncio", registry=registry
        )
        self.unacked = Gauge(
            "citybrain_gateway_unacked_messages", "Messages received but not yet acknowledged", registry=registry
        )
        self.ack_lag = Histogram(
            "citybrain_gateway_ack_lag_seconds",
            "From MQTT receipt to PUBACK (after the Kafka ack)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.backpressure = Counter(
            "citybrain_gateway_backpressure_seconds_total",
            "Time paho's thread waited for queue space",
            registry=registry,
        )
        self.kafka_errors = Counter(
            "citybrain_gateway_kafka_errors_total", "Failed Kafka sends (retried)", registry=registry
        )
        self.kafka_regressions = Counter(
            "citybrain_gateway_kafka_log_regressions_total",
            "Times Kafka handed out an offset at or below one it had acknowledged (it lost records)",
            registry=registry,
        )
        self.kafka_resent = Counter(
            "citybrain_gateway_kafka_resent_messages_total",
            "Acknowledged messages sent to Kafka again because its log lost them (kafka_replay_s)",
            registry=registry,
        )
        self.bridged = Counter(
            "citybrain_gateway_bridged_total", "Records re-published on MQTT", ["stream"], registry=registry
        )
        self.bridge_inflight = Gauge(
            "citybrain_gateway_bridge_inflight",
            "Bridge publishes awaiting their PUBACK (at bridge_max_inflight the bridge waits)",
            registry=registry,
        )
        self.bridge_waits = Counter(
            "citybrain_gateway_bridge_waits_total",
            "Times the bridge waited for MQTT acknowledgements before taking more from Kafka",
            registry=registry,
        )
        self.bridge_written_off = Counter(
            "citybrain_gateway_bridge_written_off_total",
            "Bridge publishes never acknowledged within bridge_stall_s (no longer waited for)",
            registry=registry,
        )
        self.connected = Gauge("citybrain_gateway_mqtt_connected", "1 when connected to MQTT", registry=registry)
        self.throttled = Counter(
            "citybrain_gateway_throttled_total",
            "Messages dropped because their device flooded (above its model's cadence × factor)",
            ["class"],
            registry=registry,
        )
        self.flooding = Gauge(
            "citybrain_gateway_flooding_devices", "Devices throttled in the current report window", registry=registry
        )
        self.flood_reports = Counter(
            "citybrain_gateway_flood_reports_total", "Flood reports written to the dead-letter topic", registry=registry
        )
        self.throttle_devices = Gauge(
            "citybrain_gateway_throttle_tracked_devices", "Devices in the rate-limit map", registry=registry
        )
        #: The Kafka sink's own series (``citybrain_sink_*{source="mqtt-gateway"}``).
        self.sink = KafkaSinkMetrics(registry)
        # Where paho's time ends and ours begins: its network thread ("mqtt": reading and
        # parsing packets, PUBACKs) against the asyncio loop ("asyncio": validation, Kafka).
        registry.register(ThreadCpuCollector("citybrain_gateway", thread_role))


def thread_role(thread: threading.Thread) -> str:
    """The ``thread`` label of the gateway's thread CPU metric."""
    if thread.name.startswith("paho-mqtt-client"):
        return "mqtt"
    if thread is threading.main_thread():
        return "asyncio"
    return "other"


def classify(topic: str, payload: bytes, max_payload: int) -> tuple[str | None, str, str]:
    """Validate an uplink at the edge: (device code or None, reason, detail).

    Pure; the reason is empty when the message is valid.
    """
    if len(payload) > max_payload:
        return None, "too_large", f"{len(payload)} bytes > {max_payload}"
    try:
        up = parse_uplink(topic)
    except TopicError as exc:
        return None, "bad_topic", str(exc)
    try:
        parse_code(up.device_code)
    except DeviceCodeError as exc:
        return None, "bad_code", str(exc)
    if not payload and up.kind != "status":
        return None, "empty", "empty payload"
    return up.device_code, "", ""


#: Messages taken from paho's hand-off per sink call (bounds one burst's latency and memory).
_BURST_MAX = 1000


class Gateway:
    """One gateway instance. Several can share the load with ``$share`` subscriptions."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.cfg = config
        self.metrics = metrics
        self._client: mqtt.Client | None = None
        self._sink: KafkaSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set while the hand-off has room; paho's thread waits on it when the inbox is full.
        self._room = threading.Event()
        self._room.set()
        # A wake-up of the batch loop is scheduled and has not run yet (paho's thread sets it,
        # the loop clears it): one call_soon_threadsafe per burst, not per message.
        self._wake_pending = False
        self._inbox: collections.deque[mqtt.MQTTMessage] = collections.deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = threading.Event()
        self._connected = threading.Event()
        # Set on the SUBACK that grants the uplink subscription: only then does the broker
        # route devices' messages to this gateway (a CONNACK alone does not say so).
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._sub_refused = False
        self._unacked = 0
        self._bridge_consumer: AIOKafkaConsumer | None = None
        # Message ids of bridge publishes not yet acknowledged; touched on the event loop only.
        self._bridge_pending: set[int] = set()
        self._bridge_room = asyncio.Event()
        self._throttle: DeviceThrottle | None = None
        self._floods: FloodTracker | None = None
        if config.throttle is not None:
            # Imported here: the model files are read once, only by gateways that throttle.
            from devices.models import shipped_models

            t = config.throttle
            profiles, default = profiles_for(shipped_models().all(), t)
            self._throttle = DeviceThrottle(profiles, default, max_devices=t.max_devices)
            self._floods = FloodTracker(t.window_s, max_devices=t.max_flooding, sample_bytes=config.max_payload_bytes)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka, then MQTT, and start the batching and bridge tasks."""
        self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        sink = KafkaSink(
            KafkaSinkConfig(
                cfg.kafka_bootstrap,
                cfg.topics,
                partitions=cfg.partitions,
                source="mqtt-gateway",
                # paho's hand-off is bounded by queue_max already; the sink holds as many again
                queue_max=cfg.queue_max,
                batch_max=cfg.batch_max,
                batch_max_bytes=cfg.batch_max_bytes,
                linger_ms=cfg.linger_ms,
                client_id=cfg.kafka_client_id,
                replay_s=cfg.kafka_replay_s,
            ),
            self.metrics.sink,
            on_record=self._record_sent,
            on_error=self.metrics.kafka_errors.inc,
            on_resend=self._record_resend,
        )
        try:
            await sink.start()
        except SinkError as exc:
            raise GatewayError(
                f"cannot reach Kafka at {self.cfg.kafka_bootstrap}: {exc}; "
                "start the broker or fix CITYBRAIN_KAFKA_BOOTSTRAP"
            ) from exc
        self._sink = sink
        self._tasks.append(asyncio.create_task(self._batch_loop(), name="gateway-batcher"))
        if self._floods is not None:
            self._tasks.append(asyncio.create_task(self._flood_loop(), name="gateway-floods"))
        self._connect_mqtt()
        if self.cfg.bridge:
            self._tasks.append(asyncio.create_task(self._bridge_loop(), name="gateway-bridge"))

    def healthy(self) -> bool:
        sink_ok = self._sink is not None and self._sink.healthy()
        return sink_ok and self._connected.is_set() and all(not t.done() for t in self._tasks)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until the gateway is connected to MQTT and the broker has acknowledged its
        uplink subscription (SUBACK), so a message published from now on reaches it.

        Raises GatewayError after ``timeout`` seconds, naming a refused subscription.
        """
        deadline = time.monotonic() + timeout
        while not self._subscribed.is_set():
            if time.monotonic() > deadline:
                where = f"{self.cfg.mqtt_host}:{self.cfg.mqtt_port}"
                if self._sub_refused:
                    raise GatewayError(f"MQTT broker {where} refused the uplink subscription (check its ACL)")
                raise GatewayError(f"no MQTT connection with an acknowledged subscription to {where}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop taking messages; unacknowledged ones are redelivered by the broker later."""
        self._stopping.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._room.set()  # unblock a paho thread waiting for room
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._floods is not None and self._sink is not None:
            # Open windows are reported now rather than lost with the process.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._report_floods(self._floods.drain()), 5)
        if self._bridge_consumer is not None:
            with contextlib.suppress(Exception):
                await self._bridge_consumer.stop()
        if self._sink is not None:
            # Not drained: MQTT is disconnected, so nothing more can be acked; the broker
            # redelivers every unacked message to the next gateway.
            with contextlib.suppress(Exception):
                await self._sink.stop(drain_timeout=0)

    # -- MQTT side (paho's thread) ------------------------------------------

    def _connect_mqtt(self) -> None:
        client_id = self.cfg.client_id or f"citybrain-gw-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if self.cfg.mqtt_username:
            client.username_pw_set(self.cfg.mqtt_username, self.cfg.mqtt_password)
        if self.cfg.mqtt_tls is not None:
            self.cfg.mqtt_tls.apply(client)
        # Many messages may be in flight while waiting for Kafka acks.
        client.max_inflight_messages_set(65535)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.reconnect_delay_set(1, 5)
        self._client = client
        try:
            client.connect_async(self.cfg.mqtt_host, self.cfg.mqtt_port, keepalive=30)
        except OSError as exc:
            raise GatewayError(f"cannot connect to MQTT at {self.cfg.mqtt_host}:{self.cfg.mqtt_port}: {exc}") from exc
        client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT connect refused: %s", reason)
            return
        filt = "citybrain/up/+/+"
        if self.cfg.shared_group:
            filt = f"$share/{self.cfg.shared_group}/{filt}"
        self._sub_mid = client.subscribe(filt, qos=1)[1]
        self._connected.set()
        self.metrics.connected.set(1)
        log.info("gateway connected to MQTT %s:%d, subscribed %s", self.cfg.mqtt_host, self.cfg.mqtt_port, filt)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid != self._sub_mid:
            return
        if any(getattr(r, "is_failure", False) for r in reasons):
            self._sub_refused = True
            log.error("MQTT broker refused the uplink subscription: %s", [str(r) for r in reasons])
            return
        self._sub_refused = False
        self._subscribed.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # paho's network thread: hand the acknowledgement to the event loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._bridge_acked, mid)

    def _bridge_acked(self, mid: int) -> None:
        self._bridge_pending.discard(mid)
        self.metrics.bridge_inflight.set(len(self._bridge_pending))
        if len(self._bridge_pending) < self.cfg.bridge_max_inflight:
            self._bridge_room.set()

    async def _bridge_wait_for_room(self) -> None:
        """Backpressure: at ``bridge_max_inflight`` unacknowledged publishes, wait for acknowledgements."""
        if len(self._bridge_pending) < self.cfg.bridge_max_inflight:
            return
        self.metrics.bridge_waits.inc()
        self._bridge_room.clear()
        try:
            await asyncio.wait_for(self._bridge_room.wait(), self.cfg.bridge_stall_s)
        except TimeoutError:
            log.warning(
                "bridge: %d publishes unacknowledged for %.0fs; no longer waiting for them",
                len(self._bridge_pending),
                self.cfg.bridge_stall_s,
            )
            self.metrics.bridge_written_off.inc(len(self._bridge_pending))
            self._bridge_pending.clear()
            self.metrics.bridge_inflight.set(0)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()
        self.metrics.connected.set(0)
        if not self._stopping.is_set():
            log.warning("gateway lost MQTT connection (%s); paho reconnects", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._throttle is not None and not self._admit(client, msg):
            return
        inbox = self._inbox
        if len(inbox) >= self.cfg.queue_max:
            t = time.monotonic()
            while len(inbox) >= self.cfg.queue_max:
                self._room.clear()
                if len(inbox) < self.cfg.queue_max or self._stopping.is_set():
                    break
                self._room.wait(0.5)
            self.metrics.backpressure.inc(time.monotonic() - t)
        if self._stopping.is_set():
            return
        msg.timestamp = time.monotonic()
        inbox.append(msg)
        if not self._wake_pending:
            # Appended before the flag is read: if a wake-up is already pending, it runs
            # after this append and the loop drains this message with the rest.
            self._wake_pending = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._wake_pending = False
        self._wakeup.set()

    def _admit(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> bool:
        """Apply the device's flood limit (paho's thread); a refused message is acked and dropped.

        Dropping rather than delaying: a held QoS 1 message keeps a slot of the shared
        in-flight window and of the hand-off queue, which is exactly how a flooder would
        starve everyone else. The drop is counted and reported, never silent.
        """
        assert self._throttle is not None and self._floods is not None
        code = topic_device(msg.topic)
        if self._throttle.admit(code):
            return True
        prof = self._throttle.profile_of(code)
        self.metrics.throttled.labels(prof.device_class).inc()
        if msg.qos > 0:
            client.ack(msg.mid, msg.qos)
        if self._floods.record(code, prof.device_class, msg.topic, bytes(msg.payload)):
            log.warning(
                "device %s floods topic %s: above %.0f× its %s cadence (%.0f s); throttled, reported in %.0f s",
                code,
                msg.topic[:200],
                prof.cadence_s / prof.interval_s,
                prof.device_class,
                prof.cadence_s,
                self._floods.window_s,
            )
        return False

    # -- asyncio side ---------------------------------------------------------

    async def _flood_loop(self) -> None:
        """Write flood reports whose window ended, and export the throttle's size."""
        assert self._floods is not None and self._throttle is not None
        tick = min(1.0, self._floods.window_s / 4)
        while True:
            await asyncio.sleep(tick)
            self.metrics.flooding.set(len(self._floods))
            # len() of an OrderedDict another thread mutates is a single atomic read.
            self.metrics.throttle_devices.set(len(self._throttle))
            due = self._floods.due()
            if due:
                await self._report_floods(due)

    async def _report_floods(self, reports: list[FloodReport]) -> None:
        """One dead-letter record per report: reason ``throttled``, the count, a sample payload."""
        assert self._sink is not None
        sent: list[tuple[asyncio.Future[None], FloodReport]] = []
        for r in reports:
            detail = (
                f"{r.dropped} messages of {r.device_class} device {r.device_code} dropped"
                f" between {r.first_at.isoformat()} and {r.last_at.isoformat()}"
            )
            extra = (
                ("count", str(r.dropped).encode()),
                ("device", r.device_code.encode()),
                ("class", r.device_class.encode()),
                ("last_at", r.last_at.isoformat().encode()),
            )
            try:
                fut = await self._sink.dead_letter(r.sample, "throttled", detail, r.topic, r.first_at, extra)
            except SinkError as exc:
                log.error("flood report for device %s on %s not written: %s", r.device_code, r.topic[:200], exc)
                continue
            sent.append((fut, r))
        for fut, r in sent:
            try:
                await fut
            except SinkError as exc:
                log.error("flood report for device %s on %s not written: %s", r.device_code, r.topic[:200], exc)
            else:
                self.metrics.flood_reports.inc()

    async def _batch_loop(self) -> None:
        """Validate what paho handed over and pass it to the sink; each message is acked on its Kafka ack.

        Per wake-up, what paho queued is taken as one burst: one sink call, one future
        and one metrics update for the burst's accepted messages (at city traffic the
        per-message asyncio and Prometheus overhead was a third of the gateway's CPU).
        """
        assert self._sink is not None
        sink = self._sink
        max_payload = self.cfg.max_payload_bytes
        inbox = self._inbox
        kinds = ("telemetry", "event", "status")
        while True:
            if not inbox:
                self._wakeup.clear()
                await self._wakeup.wait()
            while inbox:
                burst: list[RawMessage] = []
                acks: list[tuple[int, int, float]] = []
                received: dict[str, int] = {}
                rx = datetime.now(UTC)
                for _ in range(min(len(inbox), _BURST_MAX)):
                    msg = inbox.popleft()
                    payload = bytes(msg.payload)
                    topic = msg.topic
                    kind = topic.rsplit("/", 1)[-1]
                    kind = kind if kind in kinds else "other"
                    received[kind] = received.get(kind, 0) + 1
                    code, reason, detail = classify(topic, payload, max_payload)
                    if reason:
                        log.warning("dead-letter %s from topic %s: %s", reason, topic[:200], detail)
                        fut = await sink.dead_letter(payload, reason, detail, topic, rx)
                        self._unacked += 1
                        fut.add_done_callback(
                            functools.partial(self._acked, [(msg.mid, msg.qos, msg.timestamp)], reason)
                        )
                        continue
                    burst.append(
                        RawMessage(
                            topic=topic,
                            payload=payload,
                            received_at=rx,
                            transport=Transport.MQTT,
                            device_code=code,
                            meta=(("qos", str(msg.qos)),),
                        )
                    )
                    acks.append((msg.mid, msg.qos, msg.timestamp))
                if not self._room.is_set():
                    self._room.set()  # paho's thread waits for room: there is some now
                if burst:
                    self._unacked += len(burst)
                    fut = await sink.submit_many(burst)
                    fut.add_done_callback(functools.partial(self._acked, acks, ""))
                for kind, n in received.items():
                    self.metrics.received.labels(kind).inc(n)
                self.metrics.queue_depth.set(len(inbox))
                self.metrics.unacked.set(self._unacked)

    def _acked(self, acks: list[tuple[int, int, float]], reason: str, fut: asyncio.Future[None]) -> None:
        """Kafka has the messages (or a dead letter): PUBACK them now. A failed future is never acked.

        The sink fails futures only when it stops; the broker redelivers those later.
        """
        if fut.cancelled() or fut.exception() is not None:
            return
        client = self._client
        now = time.monotonic()
        lag = self.metrics.ack_lag
        for mid, qos, t0 in acks:
            if client is not None and qos > 0:
                client.ack(mid, qos)
            if not reason:
                lag.observe(now - t0)
        if reason:
            self.metrics.rejected.labels(reason).inc(len(acks))
        else:
            self.metrics.forwarded.inc(len(acks))
        self._unacked -= len(acks)
        self.metrics.unacked.set(self._unacked)

    def _record_resend(self, messages: int) -> None:
        self.metrics.kafka_regressions.inc()
        self.metrics.kafka_resent.inc(messages)

    def _record_sent(self, messages: int) -> None:
        self.metrics.batches.inc()
        self.metrics.batch_size.observe(messages)

    # -- downstream bridge ---------------------------------------------------

    async def _bridge_loop(self) -> None:
        topics = [self.cfg.topics.alerts]
        if self.cfg.bridge_readings:
            topics += [self.cfg.topics.readings(c) for c in self.cfg.device_classes]
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.cfg.kafka_bootstrap,
            group_id=f"{self.cfg.topics.prefix}-mqtt-bridge",
            client_id=self.cfg.kafka_client_id or f"citybrain-bridge-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="latest",
            enable_auto_commit=True,
        )
        self._bridge_consumer = consumer
        await retrying(
            KafkaError, what="bridge cannot start yet", log=log, wait_s=1.0, max_wait_s=None, level=logging.WARNING
        )(consumer.start)
        # Imported here: only a gateway that bridges readings reads the model files.
        from devices.grades import masker_for
        from devices.models import shipped_models

        grades = self.cfg.bridge_grades
        for g in grades:
            downstream_filter(g)  # an unknown grade stops the bridge at once, not per record
        masker = masker_for(shipped_models())
        async for rec in consumer:
            out: list[tuple[str, str, bytes]] = []
            try:
                doc = json.loads(rec.value)
                if rec.topic == self.cfg.topics.alerts:
                    out.append(("alerts", alert_topic(doc["district"], doc["severity"]), rec.value))
                else:
                    # The full record is on Kafka only; MQTT gets one view per grade.
                    district, device_class, code = doc["district"], doc["class"], doc["device"]
                    for grade in grades:
                        view = masker.view(doc, grade)
                        if view is None:
                            continue
                        value = rec.value if view is doc else json.dumps(view, separators=(",", ":")).encode()
                        stream = "readings" if grade == "public" else f"readings.{grade}"
                        out.append((stream, downstream_topic(district, device_class, code, grade), value))
            except (ValueError, KeyError, TypeError, AttributeError, TopicError) as exc:
                log.warning("bridge skipped a record on %s: %s", rec.topic, exc)
                continue
            if self._client is not None:
                for stream, topic, value in out:
                    await self._bridge_wait_for_room()
                    info = self._client.publish(topic, value, qos=1)
                    if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                        # Queued (also while disconnected: paho sends it on reconnect): its PUBACK frees room.
                        self._bridge_pending.add(info.mid)
                    self.metrics.bridged.labels(stream).inc()
                self.metrics.bridge_inflight.set(len(self._bridge_pending))


async def run_gateway(
    config: GatewayConfig,
    metrics: GatewayMetrics,
    stop: asyncio.Event,
    on_ready: Callable[[Gateway], None] | None = None,
) -> None:
    """Run a gateway until ``stop`` is set."""
    gw = Gateway(config, metrics)
    await gw.start()
    try:
        await gw.wait_connected(30)
        if on_ready:
            on_ready(gw)
        await stop.wait()
    finally:
        await gw.stop()
