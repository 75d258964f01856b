"""Fleet runner: a whole city of simulated devices over MQTT (and HJ 212 TCP) from one process.

Gateway model
-------------
Field devices rarely hold one MQTT connection each: NB-IoT covers report
through an operator platform, poles through their cabinet controller, stations
through a data logger. The fleet mirrors that: ``connections`` paho clients
(each with its own network thread, ``loop_start``) carry many devices, chosen
by a stable hash of the code, and the platform tells devices apart by topic
(``citybrain/up/{code}/…``). Devices with an ``offline`` fault get a
connection of their own, with a last will on their ``status`` topic, because a
will belongs to a connection: when the fault starts, the connection is dropped
without DISCONNECT and the broker publishes the will.

Threads and asyncio
-------------------
:meth:`Fleet.run` is a plain blocking loop (the CLI runs it in the main thread);
:meth:`Fleet.run_async` runs it in a worker thread so an asyncio program can
await it. paho's callbacks only bump counters and put commands into a bounded
queue; the loop drains it, so device state is only touched by one thread.
Backpressure: ``max_queued_messages`` bounds paho's outgoing queue (in-flight
QoS 1 messages included); when it is full the loop waits for PUBACKs instead
of growing memory.

Simulated time
--------------
Simulated time starts at ``start`` and runs ``speed`` times faster than the
wall clock (``speed=None``: as fast as the broker takes it, for benchmarks and
tests). Each device reports at its model's ``cadence_s`` (or ``interval_s``) at
a seeded phase; manhole covers are checked every ``tick_s`` for alarm-on-change.

Sent log
--------
One NDJSON line per record put on the wire (or withheld by a fault): device,
code on the wire, uplink kind, protocol, event time, wire timestamp, values,
the pre-fault values of changed metrics, fault labels and copies sent. One line
per record rather than per metric keeps logging off the critical path;
:func:`sent_rows` flattens it to (device, metric, event time, value, fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import queue
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt

from core.topics import command_topic, uplink_topic
from ingest.adapters.hj212.codec import FrameDecoder, parse_segment
from ingest.errors import DecodeError
from simulators.base import Site, ValueModel
from simulators.encoders import (
    CN_HOUR,
    aggregate,
    hj212_aggregate,
    hj212_rtd,
    json_batch,
    json_telemetry,
    manhole_frame,
)
from simulators.faults import Emission, FaultInjector, FaultKind, FaultPlan, Record, corrupt
from simulators.manhole import ManholeCover
from simulators.pole import SmartPole

__all__ = [
    "DEFAULT_HJ212_MODELS",
    "Fleet",
    "FleetConfig",
    "FleetError",
    "FleetStats",
    "Hj212Link",
    "SimDevice",
    "sent_rows",
]

log = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)
#: Samples per hour-data interval (the data logger's minute values, thinned).
_AGGREGATE_POINTS = 4
_STATUS_ONLINE = json.dumps({"v": 1, "state": "online"})
_STATUS_OFFLINE = json.dumps({"v": 1, "state": "offline"})


#: Models that report over HJ 212 TCP when a fleet is given the platform's HJ 212 server.
DEFAULT_HJ212_MODELS: tuple[str, ...] = ("water-station",)


class FleetError(Exception):
    """The fleet could not connect or publish."""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """How a fleet runs.

    Attributes:
        host: MQTT broker host.
        port: MQTT broker port.
        start: Simulated start time (aware).
        username: MQTT user name.
        password: MQTT password.
        connections: Shared gateway connections.
        speed: Simulated seconds per wall second; ``None`` runs as fast as possible.
        tick_s: Simulated step of manhole alarm checks.
        interval_s: Report interval of every device instead of its model's cadence.
        qos: MQTT QoS of uplinks.
        max_queued: Bound of each connection's outgoing queue (backpressure).
        sent_log: NDJSON ground-truth file, or ``None``.
        progress: Print a rate line on stderr every second.
        hj212: ``(host, port)`` of the platform's HJ 212 server: devices of ``hj212_models``
            then report over TCP instead of MQTT.
        hj212_models: Models that speak HJ 212 when ``hj212`` is set: water stations send hour
            data (CN 2061), air stations and noise monitors real-time data (CN 2011).
        manhole_binary: Covers send the binary TLV frame over MQTT (else canonical JSON). Off by
            default: the platform decodes MQTT uplinks as canonical JSON and takes the binary
            frame only from the NB-IoT webhook, so binary over MQTT is for broker-only tests.
        seed: Seed of phases and fault chances.
    """

    host: str
    port: int
    start: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    username: str | None = None
    password: str | None = None
    connections: int = 4
    speed: float | None = 60.0
    tick_s: float = 60.0
    interval_s: float | None = None
    qos: int = 1
    max_queued: int = 20_000
    sent_log: Path | None = None
    progress: bool = False
    hj212: tuple[str, int] | None = None
    hj212_models: tuple[str, ...] = DEFAULT_HJ212_MODELS
    manhole_binary: bool = False
    seed: int = 0


@dataclass(slots=True)
class SimDevice:
    """One device of the fleet: its value model and how it speaks.

    Attributes:
        model: The value model (its ``site`` says who and where).
        protocol: ``json``, ``manhole`` (binary TLV over MQTT) or ``hj212`` (TCP); set by the fleet.
        counter: Frame counter of binary frames.
    """

    model: ValueModel
    protocol: str = "json"
    counter: int = 0

    @property
    def site(self) -> Site:
        """Who and where the device is."""
        return self.model.site

    @property
    def code(self) -> str:
        """Its device code."""
        return self.model.site.code


@dataclass(slots=True)
class FleetStats:
    """Counters of a run; rates are per wall-clock second.

    ``records`` are data records generated, ``messages`` the data messages put on MQTT
    (copies included), ``published`` every MQTT PUBLISH (status and command acks too),
    ``acked`` the PUBACKs received for them, ``withheld`` records a fault kept off the wire.
    """

    records: int = 0
    messages: int = 0
    published: int = 0
    acked: int = 0
    withheld: int = 0
    bytes: int = 0
    hj212_frames: int = 0
    hj212_replies: Counter[str] = field(default_factory=Counter)
    commands: int = 0
    duplicate_commands: int = 0
    acks_sent: int = 0
    wall_s: float = 0.0
    sim_s: float = 0.0
    credential_outcomes: dict[str, str] = field(default_factory=dict)

    @property
    def publish_rate(self) -> float:
        """Data messages published per wall second."""
        return self.messages / self.wall_s if self.wall_s else 0.0

    @property
    def ack_rate(self) -> float:
        """PUBACKs received per wall second."""
        return self.acked / self.wall_s if self.wall_s else 0.0


class _Connection:
    """One paho client in its own network thread; counts PUBACKs."""

    def __init__(self, cfg: FleetConfig, name: str, will: tuple[str, str] | None = None) -> None:
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"citybrain-sim-{name}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
        )
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(cfg.max_queued)
        self.acked = 0
        self.published = 0
        self.connected = threading.Event()
        self.commands: queue.Queue[tuple[str, bytes]] | None = None
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscriptions: list[str] = []
        try:
            self.client.connect(cfg.host, cfg.port, keepalive=30)
        except OSError as exc:
            raise FleetError(f"cannot connect to MQTT at {cfg.host}:{cfg.port}: {exc}") from exc
        self.client.loop_start()
        if not self.connected.wait(10):
            self.client.loop_stop()
            raise FleetError(f"no CONNACK from {cfg.host}:{cfg.port}")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.acked += 1  # only this connection's network thread writes it

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            # Re-subscribe on every (re)connect: the session is clean.
            for start in range(0, len(self.subscriptions), 100):
                client.subscribe([(t, 1) for t in self.subscriptions[start : start + 100]])
            self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.commands is None:
            return
        try:
            self.commands.put_nowait((msg.topic, msg.payload))
        except queue.Full:
            log.warning("command queue full; dropped a command on %s", msg.topic)

    def subscribe(self, topics: list[str], commands: queue.Queue[tuple[str, bytes]]) -> None:
        self.commands = commands
        self.subscriptions = topics
        for start in range(0, len(topics), 100):
            self.client.subscribe([(t, 1) for t in topics[start : start + 100]])

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool = False) -> None:
        while True:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                self.published += 1
                return
            time.sleep(0.001)  # backpressure: wait for PUBACKs rather than grow the queue

    def drop(self) -> None:
        """Lose the connection without DISCONNECT, so the broker sends the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Hj212Link:
    """An HJ 212 station's TCP connection to the platform: sends frames, reads 9014/9011 replies.

    Args:
        host: HJ 212 server host.
        port: HJ 212 server port.
        timeout: Connect timeout, seconds.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise FleetError(f"cannot connect to HJ 212 server {host}:{port}: {exc}") from exc
        self.sock.settimeout(None)
        self.replies: Counter[str] = Counter()
        self.errors = 0
        self._reader = threading.Thread(target=self._read, name="hj212-link", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        framer = FrameDecoder()
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            for item in framer.feed(data):
                if isinstance(item, DecodeError):
                    self.errors += 1
                    continue
                try:
                    self.replies[parse_segment(item).cn] += 1
                except DecodeError:
                    self.errors += 1

    def send(self, frame: bytes) -> None:
        """Write one frame."""
        self.sock.sendall(frame)

    def wait_replies(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` replies arrived (any CN); polls, for shutdown only."""
        deadline = time.monotonic() + timeout
        while sum(self.replies.values()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return sum(self.replies.values()) >= count

    def close(self) -> None:
        """Close the connection and stop the reader."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=5)


class Fleet:
    """Drives simulated devices over MQTT (and HJ 212 TCP) in simulated time.

    Args:
        devices: The devices.
        config: How to run.
        plan: Faults to inject (default: none).
    """

    def __init__(self, devices: Sequence[SimDevice], config: FleetConfig, plan: FaultPlan | None = None) -> None:
        if not devices:
            raise ValueError("a fleet needs at least one device")
        self.devices = list(devices)
        self.config = config
        self.plan = plan or FaultPlan()
        self.injector = FaultInjector(self.plan, [d.code for d in self.devices], config.start)
        self.stats = FleetStats()
        self._by_code = {d.code: d for d in self.devices}
        self._commands: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=10_000)
        # (code, command id) → ack sent: a re-sent command is answered again, never re-executed
        self._answered: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._gateways: list[_Connection] = []
        self._solo: dict[str, _Connection | None] = {}
        self._links: dict[str, Hj212Link] = {}
        self._dropped: list[_Connection] = []
        self._log: IO[str] | None = None
        self._seq = 0
        for dev in self.devices:
            adapter = dev.model.model.adapter
            if adapter == "manhole-tlv" and config.manhole_binary:
                dev.protocol = "manhole"
            elif config.hj212 is not None and dev.model.model.id in config.hj212_models:
                dev.protocol = "hj212"
            else:
                dev.protocol = "json"

    # --- connections -------------------------------------------------------------------------

    def _gateway_of(self, code: str) -> _Connection:
        solo = self._solo.get(code)
        if solo is not None:
            return solo
        return self._gateways[zlib.crc32(code.encode()) % len(self._gateways)]

    def _open(self) -> None:
        cfg = self.config
        self._gateways = [_Connection(cfg, f"gw{i}") for i in range(max(1, cfg.connections))]
        for dev in self.devices:
            if self.injector.has(dev.code, FaultKind.OFFLINE):
                self._solo[dev.code] = _Connection(
                    cfg, "solo", will=(uplink_topic(dev.code, "status"), _STATUS_OFFLINE)
                )
        poles: dict[int, list[str]] = {}
        for dev in self.devices:
            if isinstance(dev.model, SmartPole):
                gw = self._gateway_of(dev.code)
                poles.setdefault(id(gw), []).append(command_topic(dev.code))
        for gw in {id(g): g for g in [*self._gateways, *(s for s in self._solo.values() if s)]}.values():
            if id(gw) in poles:
                gw.subscribe(poles[id(gw)], self._commands)
        if cfg.hj212 is not None:
            for dev in self.devices:
                if dev.protocol == "hj212":
                    self._links[dev.code] = Hj212Link(*cfg.hj212)
        for dev in self.devices:
            if self.injector.has(dev.code, FaultKind.WRONG_CREDENTIALS):
                self.stats.credential_outcomes[dev.code] = self._try_wrong_credentials(dev.code)
                self._write(
                    {
                        "device": dev.code,
                        "fault": ["wrong_credentials"],
                        "outcome": self.stats.credential_outcomes[dev.code],
                    }
                )
            self._gateway_of(dev.code).publish(uplink_topic(dev.code, "status"), _STATUS_ONLINE, 1, retain=True)

    def _try_wrong_credentials(self, code: str) -> str:
        cfg = self.config
        result: dict[str, str] = {}
        done = threading.Event()

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            result["outcome"] = "refused" if reason.is_failure else "accepted"
            done.set()

        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"citybrain-sim-badcred-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(code, "wrong-password")
        client.on_connect = on_connect
        try:
            client.connect(cfg.host, cfg.port, keepalive=10)
        except OSError:
            return "refused"
        client.loop_start()
        done.wait(5)
        client.disconnect()
        client.loop_stop()
        return result.get("outcome", "no_answer")

    def _close(self) -> None:
        for dev in self.devices:
            conn = self._gateway_of(dev.code) if self._solo.get(dev.code, True) is not None else None
            if conn is not None:
                conn.publish(uplink_topic(dev.code, "status"), _STATUS_OFFLINE, 1, retain=True)
        conns = [*self._gateways, *(s for s in self._solo.values() if s)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(c.client.want_write() for c in conns):
            time.sleep(0.01)
        # Wait (bounded) for the PUBACKs of everything published, so the counts are final.
        while time.monotonic() < deadline and self._acked() < self._published():
            time.sleep(0.01)
        for conn in conns:
            conn.close()
        for link in self._links.values():
            link.wait_replies(self.stats.hj212_frames // max(1, len(self._links)), 2.0)
            self.stats.hj212_replies.update(link.replies)
            link.close()

    def _connections(self) -> list[_Connection]:
        return [*self._gateways, *(s for s in self._solo.values() if s), *self._dropped]

    def _acked(self) -> int:
        return sum(c.acked for c in self._connections())

    def _published(self) -> int:
        return sum(c.published for c in self._connections())

    # --- sent log --------------------------------------------------------------------------------

    def _write(self, row: dict[str, Any]) -> None:
        if self._log is not None:
            self._seq += 1
            row["seq"] = self._seq
            self._log.write(json.dumps(row, separators=(",", ":"), default=str) + "\n")

    def _log_records(self, dev: SimDevice, em: Emission, uplink: str, sim_now: datetime) -> None:
        if self._log is None:
            return
        for rec in em.records:
            self._write(
                {
                    "device": dev.code,
                    "topic_device": em.topic_code,
                    "uplink": uplink,
                    "protocol": dev.protocol,
                    "model": dev.model.model.id,
                    "event_time": rec.event_time.isoformat(),
                    "ts": rec.ts.isoformat(),
                    "sent_at": sim_now.isoformat(),
                    "values": rec.values,
                    "truth": rec.truth,
                    "flags": rec.flags,
                    "fault": rec.faults,
                    "corrupt": em.corrupt,
                    "copies": em.copies,
                }
            )

    # --- emitting ---------------------------------------------------------------------------------

    def _encode(self, dev: SimDevice, em: Emission, kind: str, alarms: frozenset[str]) -> list[bytes]:
        model = dev.model.model
        if dev.protocol == "manhole":
            out = []
            for rec in em.records:
                dev.counter += 1
                out.append(manhole_frame(dev.code, rec.ts, rec.values, kind=kind, alarms=alarms, counter=dev.counter))
            return out
        if dev.protocol == "hj212":
            frames = []
            for rec in em.records:
                if not self._hour_data(dev):
                    frames.append(hj212_rtd(model, dev.code, rec.ts, rec.values, flags=rec.flags))
                    continue
                start = rec.ts - _HOUR
                # Min and max of the hour; the average is the record's (faults applied to it).
                stats = aggregate(dev.model.sample, rec.event_time - _HOUR, rec.event_time, _AGGREGATE_POINTS)
                merged = {k: (v, min(stats[k][1], v), max(stats[k][2], v)) for k, v in rec.values.items() if k in stats}
                frames.append(hj212_aggregate(model, dev.code, CN_HOUR, start, merged, flags=rec.flags, sent_at=rec.ts))
            return frames
        if em.batch:
            return [json_batch(model, [(r.ts, r.values) for r in em.records], flags=[r.flags for r in em.records])]
        return [json_telemetry(model, r.ts, r.values, flags=r.flags) for r in em.records]

    @staticmethod
    def _hour_data(dev: SimDevice) -> bool:
        return dev.protocol == "hj212" and dev.model.model.id == "water-station"

    def _send(
        self, dev: SimDevice, em: Emission, uplink: str, kind: str, alarms: frozenset[str], now: datetime
    ) -> None:
        self.stats.records += len(em.records)
        self._log_records(dev, em, uplink, now)
        if em.copies == 0:
            self.stats.withheld += len(em.records)
            return
        payloads = self._encode(dev, em, kind, alarms)
        if em.corrupt:
            payloads = [corrupt(p, em.corrupt, dev.protocol) for p in payloads]
        for payload in payloads:
            for _ in range(em.copies):
                if dev.protocol == "hj212":
                    self._links[dev.code].send(payload)
                    self.stats.hj212_frames += 1
                else:
                    self._gateway_of(dev.code).publish(uplink_topic(em.topic_code, uplink), payload, self.config.qos)  # type: ignore[arg-type]
                    self.stats.messages += 1
                self.stats.bytes += len(payload)

    def _emit(self, dev: SimDevice, t: datetime, step_s: float) -> None:
        if isinstance(dev.model, ManholeCover):
            events = [(e.uplink, e.kind, e.alarms, e.values) for e in dev.model.events(t, step_s)]
        elif self._hour_data(dev):
            # Hour data (CN 2061) reports the hour's average, stamped with the hour's start: the
            # value at its end would put what happened in the last minutes an hour too early.
            stats = aggregate(dev.model.sample, t - _HOUR, t, _AGGREGATE_POINTS)
            events = [("telemetry", "periodic", frozenset(), {k: round(v[0], 4) for k, v in stats.items()})]
        else:
            events = [("telemetry", "periodic", frozenset(), dev.model.sample(t))]
        for uplink, kind, alarms, values in events:
            for em in self.injector.process(dev.code, t, values):
                self._send(dev, em, uplink, kind, alarms, t)

    def _handle_commands(self, now: datetime) -> None:
        while True:
            try:
                topic, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            code = topic.rsplit("/", 1)[-1]
            dev = self._by_code.get(code)
            if dev is None or not isinstance(dev.model, SmartPole):
                continue
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = {}
            key = (code, str(doc.get("id", ""))) if isinstance(doc, dict) else (code, "")
            conn = self._gateway_of(code)
            if key[1] and key in self._answered:
                self.stats.duplicate_commands += 1
                conn.publish(uplink_topic(code, "event"), json.dumps(self._answered[key], separators=(",", ":")), 1)
                self.stats.acks_sent += 1
                continue
            self.stats.commands += 1
            ack = dev.model.handle_command(doc if isinstance(doc, dict) else {}, now)
            if key[1]:
                self._answered[key] = ack
                if len(self._answered) > 10_000:
                    self._answered.popitem(last=False)
            conn.publish(uplink_topic(code, "event"), json.dumps(ack, separators=(",", ":")), 1)
            self.stats.acks_sent += 1
            self._write({"device": code, "command": doc, "ack": ack, "sent_at": now.isoformat(), "fault": []})
            # Report the new lamp state at once, as real controllers do after a switch.
            self._send(
                dev,
                Emission(code, code, [Record(now, dev.model.sample(now), now)]),
                "telemetry",
                "periodic",
                frozenset(),
                now,
            )

    def _offline_transitions(self, now: datetime) -> None:
        for code, conn in list(self._solo.items()):
            off = self.injector.offline(code, now)
            if off and conn is not None:
                conn.drop()
                self._dropped.append(conn)
                self._solo[code] = None
                self._write(
                    {"device": code, "fault": ["offline"], "event": "connection_lost", "sent_at": now.isoformat()}
                )
            elif not off and conn is None:
                fresh = _Connection(self.config, "solo", will=(uplink_topic(code, "status"), _STATUS_OFFLINE))
                self._solo[code] = fresh
                dev = self._by_code[code]
                if isinstance(dev.model, SmartPole):
                    fresh.subscribe([command_topic(code)], self._commands)
                fresh.publish(uplink_topic(code, "status"), _STATUS_ONLINE, 1, retain=True)
                self._write({"device": code, "fault": ["offline"], "event": "back_online", "sent_at": now.isoformat()})

    # --- the loop -------------------------------------------------------------------------------

    def _interval(self, dev: SimDevice) -> float:
        if isinstance(dev.model, ManholeCover):
            return self.config.tick_s  # alarm-on-change checks; heartbeats come from the model's cadence
        return self.config.interval_s or float(dev.model.model.cadence_s)

    def run(self, duration_s: float, stop: threading.Event | None = None) -> FleetStats:
        """Run for ``duration_s`` seconds of simulated time (or until ``stop`` is set).

        Args:
            duration_s: Simulated seconds to cover.
            stop: Set it to end early (e.g. from a signal handler).

        Returns:
            The run's counters.

        Raises:
            FleetError: if the broker (or HJ 212 server) cannot be reached.
        """
        cfg = self.config
        stop = stop or threading.Event()
        start = cfg.start
        end = start + timedelta(seconds=duration_s)
        heap: list[tuple[float, int]] = []
        for i, dev in enumerate(self.devices):
            # Whole-second phases: HJ 212 times and the models' per-instant seeds are whole seconds.
            phase = zlib.crc32(f"{cfg.seed}:{dev.code}".encode()) % max(1, int(self._interval(dev)))
            if dev.model.model.hj212_intervals:
                # Pollution sources report on the clock, as their data loggers do: the sample on
                # each full hour carries that hour's means (simulators.source).
                phase = (-int(start.timestamp())) % max(1, int(self._interval(dev)))
            heap.append((start.timestamp() + phase, i))
        heapq.heapify(heap)
        log_file = cfg.sent_log.open("w", encoding="utf-8") if cfg.sent_log else None
        self._log = log_file
        wall0 = time.monotonic()
        last_progress = wall0
        sim_now = start
        try:
            self._open()
            while not stop.is_set() and heap and heap[0][0] < end.timestamp():
                due = heap[0][0]
                if cfg.speed:
                    wall_due = wall0 + (due - start.timestamp()) / cfg.speed
                    wait = wall_due - time.monotonic()
                    if wait > 0:
                        self._handle_commands(sim_now)
                        # A short sleep, then a look at ``stop``, rather than stop.wait(timeout):
                        # CPython's timed lock waits run on glibc's sem_clockwait, which libfaketime
                        # does not intercept, so under a faked clock (`make test-future`) such a
                        # wait never times out and the fleet would stand still.
                        time.sleep(min(wait, 0.05))
                        if stop.is_set():
                            break
                        continue
                due, i = heapq.heappop(heap)
                sim_now = datetime.fromtimestamp(due, UTC)
                dev = self.devices[i]
                step = self._interval(dev)
                self._offline_transitions(sim_now)
                self._emit(dev, sim_now, step)
                for em in self.injector.flush(sim_now):
                    self._send(self._by_code[em.code], em, "telemetry", "periodic", frozenset(), sim_now)
                heapq.heappush(heap, (due + step, i))
                self._handle_commands(sim_now)
                if cfg.progress and time.monotonic() - last_progress >= 1.0:
                    last_progress = time.monotonic()
                    self._progress(sim_now, last_progress - wall0)
            for em in self.injector.flush(end, final=True):
                self._send(self._by_code[em.code], em, "telemetry", "periodic", frozenset(), sim_now)
            self._handle_commands(sim_now)
            self.stats.sim_s = (sim_now - start).total_seconds()
            self._close()
        finally:
            self.stats.acked = self._acked()
            self.stats.published = self._published()
            self.stats.wall_s = time.monotonic() - wall0
            if log_file is not None:
                log_file.close()
                self._log = None
        if cfg.progress:
            self._progress(sim_now, self.stats.wall_s)
            print(file=sys.stderr)
        return self.stats

    async def run_async(self, duration_s: float, stop: threading.Event | None = None) -> FleetStats:
        """:meth:`run` in a worker thread, for asyncio programs."""
        return await asyncio.to_thread(self.run, duration_s, stop)

    def _progress(self, sim_now: datetime, wall: float) -> None:
        s = self.stats
        acked = self._acked()
        rate = s.messages / wall if wall else 0.0
        print(
            f"\rsim {sim_now:%Y-%m-%d %H:%M} | records {s.records} | messages {s.messages} ({rate:,.0f}/s)"
            f" | acked {acked} | withheld {s.withheld} | hj212 {s.hj212_frames}",
            end="",
            file=sys.stderr,
            flush=True,
        )


def sent_rows(path: Path) -> Iterator[tuple[str, str, str, float, tuple[str, ...]]]:
    """Flatten a sent log to ``(device, metric, event_time, value, faults)`` rows (records only)."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for metric, value in row.get("values", {}).items():
                yield row["device"], metric, row["event_time"], float(value), tuple(row.get("fault", ()))
