"""A steady, city-like QoS 1 load with the sender's own log: what was sent, what was acknowledged.

Failure tests, ``make chaos`` and ``make soak`` compare the store against this log.
Many devices each report once per round (one message each, air-station telemetry),
spread over a few MQTT connections as field gateways would; a few "polluter" devices
alternate dirty and clean readings so that alerts open and clear under the load.

Every message is unique by (device code, event time): a device's ``m``-th message is
dated ``base + m × step``. The publishers keep their connections (and their
unacknowledged messages) across a broker restart: paho resends what the broker never
acknowledged when it reconnects, and :meth:`CityLoad.finish` waits for every PUBACK
and publishes again, on a fresh connection, whatever is still unacknowledged. A copy
the broker did receive is stored once, because the store merges on (device, event time).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import paho.mqtt.client as mqtt

from core.topics import uplink_topic

__all__ = ["CityLoad", "LoadConfig", "LoadReport", "Sent"]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """What to send.

    Attributes:
        host: MQTT broker host.
        port: MQTT broker port.
        codes: Device codes (air stations), each one message per round.
        rate: Messages per second, all connections together.
        base: Event time of every device's first message.
        step: Event time between two messages of one device.
        connections: MQTT connections the devices share.
        polluters: The first this many devices alternate PM2.5 140 / 20 / 20 (an alert opens and clears
            every three of their messages).
        polluter_share: Fraction of all messages that come from the polluters (they report more
            often than the other devices, so alerts open and clear even in a short load).
        username: MQTT user (optional).
        password: MQTT password (optional).
    """

    host: str
    port: int
    codes: Sequence[str]
    rate: float = 200.0
    base: datetime = field(default_factory=lambda: datetime(2026, 1, 1))
    step: timedelta = timedelta(minutes=1)
    connections: int = 4
    polluters: int = 10
    polluter_share: float = 0.05
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if not self.codes:
            raise ValueError("a load needs at least one device code")
        if self.rate <= 0 or self.connections < 1:
            raise ValueError("rate must be positive and connections at least 1")
        if self.base.tzinfo is None:
            raise ValueError("base must be an aware datetime")
        if not 0 <= self.polluters < len(self.codes) or not 0 <= self.polluter_share < 1:
            raise ValueError("polluters must leave other devices, polluter_share in [0, 1)")

    def messages_per_device(self, total: int) -> int:
        """The most messages one device sends in a load of ``total`` messages (its event-time span in steps)."""
        others = len(self.codes) - self.polluters
        share = self.polluter_share if self.polluters else 0.0
        most = total * (1 - share) / others + 1
        if self.polluters:
            most = max(most, total * share / self.polluters + 1)
        return int(most) + 1


@dataclass(frozen=True, slots=True)
class Sent:
    """One message of the log: its identity and when it was handed to paho (monotonic seconds)."""

    code: str
    ts: datetime
    at: float


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What the sender knows at the end: every message is acknowledged or counted as not."""

    sent: int
    acked: int
    resent: int
    unacked: int


class CityLoad:
    """Publish :class:`LoadConfig` traffic from a thread until :meth:`stop`; keep the log."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.log: list[Sent] = []
        self._infos: list[mqtt.MQTTMessageInfo] = []
        self._payloads: list[bytes] = []
        self._clients: list[mqtt.Client] = []
        self._stop = threading.Event()
        self.pause = threading.Event()
        self._thread = threading.Thread(target=self._run, name="city-load", daemon=True)
        self._lock = threading.Lock()
        self.resent = 0
        self._episode: tuple[str, float] | None = None
        #: Pollution episodes injected so far: (district, monotonic start, seconds).
        self.episodes: list[tuple[str, float, float]] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> CityLoad:
        """Connect every publisher, then start sending."""
        for _ in range(self.cfg.connections):
            self._clients.append(self._connect())
        self._thread.start()
        return self

    def _connect(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"load-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        # Back promptly after a broker restart; paho then resends what was never acknowledged
        # (and what was published while disconnected, which it kept).
        client.reconnect_delay_set(1, 2)
        client.connect(self.cfg.host, self.cfg.port, keepalive=30)
        client.loop_start()
        return client

    def stop(self) -> None:
        """Stop sending new messages (what is in flight stays in flight)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def finish(self, timeout: float = 60.0) -> LoadReport:
        """Stop, wait for every PUBACK, publish again what is still unacknowledged, disconnect."""
        self.stop()
        deadline = time.monotonic() + timeout
        pending = self._unacked()
        while pending and time.monotonic() < deadline:
            time.sleep(0.2)
            pending = self._unacked()
        if pending:
            # The publishers gave up on these (or their connection): publish them again on a
            # fresh connection, as a device that lost its session would. At least once: the
            # store merges a copy the broker did get.
            fresh = self._connect()
            self._clients.append(fresh)
            for i in pending:
                self._infos[i] = fresh.publish(self._topic(i), self._payloads[i], qos=1)
                self.resent += 1
            while pending and time.monotonic() < deadline + timeout / 2:
                time.sleep(0.2)
                pending = self._unacked()
        for client in self._clients:
            client.loop_stop()
            client.disconnect()
        n = len(self.log)
        return LoadReport(sent=n, acked=n - len(pending), resent=self.resent, unacked=len(pending))

    def inject_episode(self, district: str, seconds: float) -> None:
        """A pollution episode: every device of ``district`` (6-digit code) reports PM2.5 160 for ``seconds``.

        Alerts open city-wide in that district and clear after it, on top of the polluters.
        """
        now = time.monotonic()
        self._episode = (district, now + seconds)
        self.episodes.append((district, now, seconds))

    # -- the log -------------------------------------------------------------

    def keys(self) -> set[tuple[str, datetime]]:
        """(device, event time) of every message sent so far."""
        with self._lock:
            return {(s.code, s.ts) for s in self.log}

    def sent_since(self, t: float) -> list[Sent]:
        """Messages handed to paho at or after monotonic time ``t``."""
        with self._lock:
            return [s for s in self.log if s.at >= t]

    def _unacked(self) -> list[int]:
        # An error rc: paho did not keep the message (it is resent by finish()).
        return [i for i, info in enumerate(self._infos) if info.rc != mqtt.MQTT_ERR_SUCCESS or not info.is_published()]

    def _topic(self, i: int) -> str:
        return uplink_topic(self.log[i].code)

    # -- sending -------------------------------------------------------------

    def _payload(self, k: int, m: int, ts: datetime) -> bytes:
        episode = self._episode
        if episode is not None and time.monotonic() < episode[1] and self.cfg.codes[k].startswith(episode[0]):
            pm25 = 160.0
        elif k < self.cfg.polluters:
            pm25 = 140.0 if m % 3 == 0 else 20.0
        else:
            pm25 = 10.0 + (k * 7 + m) % 40
        metrics = {"pm25": pm25, "pm10": 40.0, "no2": 30.0, "co": 0.6, "o3": 60.0, "so2": 8.0}
        return json.dumps({"v": 1, "ts": ts.isoformat(), "metrics": metrics}).encode()

    def _run(self) -> None:
        codes = self.cfg.codes
        interval = 1.0 / self.cfg.rate
        polluters = self.cfg.polluters
        others = len(codes) - polluters
        every = round(1 / self.cfg.polluter_share) if polluters and self.cfg.polluter_share > 0 else 0
        counts = [0] * len(codes)
        t_next = time.monotonic()
        seq = n_pol = n_other = 0
        while not self._stop.is_set():
            if self.pause.is_set():
                time.sleep(0.05)
                t_next = time.monotonic()
                continue
            # Every ``every``-th message comes from a polluter; the others go round the city.
            if every and seq % every == 0:
                k = n_pol % polluters
                n_pol += 1
            else:
                k = polluters + n_other % others
                n_other += 1
            m = counts[k]
            counts[k] += 1
            code = codes[k]
            ts = self.cfg.base + m * self.cfg.step
            payload = self._payload(k, m, ts)
            client = self._clients[k % self.cfg.connections]
            info = client.publish(uplink_topic(code), payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                # Published while the broker is away: paho keeps it and sends it on reconnect,
                # and the info completes then; only this early rc says otherwise.
                info.rc = mqtt.MQTT_ERR_SUCCESS
            with self._lock:
                self.log.append(Sent(code, ts, time.monotonic()))
                self._infos.append(info)
                self._payloads.append(payload)
            seq += 1
            t_next += interval
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                t_next = time.monotonic()  # fell behind (a stall): do not burst to catch up
