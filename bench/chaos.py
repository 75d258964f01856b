"""``make chaos``: kill -9 each part of the platform under a steady city-like load; print what was lost.

The platform runs on a private Mosquitto (persistence on, as in deploy/), with its
services supervised as ``citybrain demo`` supervises them. For each component in turn
(gateway, stream worker, Kafka-protocol broker, Mosquitto, PostgreSQL) a fresh load of
thousands of devices (one message each per round, QoS 1) runs; the component is killed
with SIGKILL mid-load and restarted by its supervisor (the platform's for services, the
harness, as systemd would, for servers); the load goes on. Then the store is compared
with the sender's log: sent, stored, lost, stored twice, alert transitions twice, and the
seconds from the kill until the first messages sent after it were stored.

The failure tests (tests/e2e/test_failures.py) run the same kills with a short load;
``make chaos`` runs them longer and prints the table::

    python -m bench.chaos [--devices 3000] [--rate 250] [--before 15] [--after 30] [--only gateway,worker]
        [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from citybrain.harness import ManagedProcess, MqttEndpoint, start_mosquitto
from citybrain.platform import Platform, demo_device_codes
from citybrain.settings import Settings
from core.topics import KafkaTopics
from simulators.load import CityLoad, LoadConfig, LoadReport

#: What can be killed, in the order ``make chaos`` kills them.
KINDS = ("gateway", "worker", "kafka", "mosquitto", "postgres")


@dataclass
class KillResult:
    """One row of the chaos table."""

    component: str
    sent: int
    stored: int
    lost: int
    duplicated: int
    recovery_s: float | None
    alert_transitions: int
    alert_duplicates: int
    #: Transitions on the Kafka alerts topic twice / recorded but never published.
    published_twice: int
    unpublished: int
    unacked: int
    resent: int
    lost_keys: list[tuple[str, datetime]]
    kill_at: float
    lost_sent_at: list[float]

    def row(self) -> str:
        rec = f"{self.recovery_s:.1f}" if self.recovery_s is not None else "not recovered"
        return (
            f"| kill -9 {self.component} | {self.sent:,} | {self.stored:,} | {self.lost:,} | {self.duplicated:,} "
            f"| {rec} | {self.alert_transitions:,} / {self.alert_duplicates} "
            f"| {self.published_twice} / {self.unpublished} |"
        )


TABLE_HEAD = (
    "| Killed | Sent (acked) | Stored | Lost | Duplicated | Recovery s | Alert transitions / twice "
    "| On Kafka twice / missing |\n"
    "|---|---|---|---|---|---|---|---|"
)

#: alert_history actions → the transition named on the alerts topic.
_TRANSITIONS = {"open": "open", "auto-resolve": "clear", "escalate": "escalate", "deescalate": "deescalate"}


async def _published(
    bootstrap: str, topic: str, ids: set[str], timeout: float = 20.0
) -> collections.Counter[tuple[str, str]]:
    """(alert id, transition) of every record on the alerts topic about these alerts, counted."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"chaos-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    try:
        parts = consumer.assignment() or set()
        deadline = time.monotonic() + timeout
        while not parts and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200)
            parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        while time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                for r in recs:
                    doc = json.loads(r.value)
                    if doc.get("id") in ids:
                        out[(doc["id"], doc["transition"])] += 1
            positions = [await consumer.position(tp) for tp in ends]
            if all(pos >= end for pos, end in zip(positions, ends.values(), strict=True)):
                break
    finally:
        await consumer.stop()
    return out


class Rig:
    """A supervised platform on a private Mosquitto; every component killable."""

    def __init__(
        self,
        root: Path,
        devices: int,
        *,
        partitions: int = 2,
        kafka_retention_s: float | None = None,
        pool_lifetime_s: float | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.root = root
        self.devices = devices
        self.partitions = partitions
        #: retention.ms of the embedded broker's topics (None: the platform's default).
        self.kafka_retention_s = kafka_retention_s
        #: Lifetime of the services' pooled PostgreSQL connections (None: the platform's default).
        self.pool_lifetime_s = pool_lifetime_s
        #: The services' log level (INFO shows a restarted worker's start-up times).
        self.log_level = log_level
        self.codes = demo_device_codes(devices)
        self.mosquitto: ManagedProcess | None = None
        self.mqtt: MqttEndpoint | None = None
        self.platform: Platform | None = None
        self._stop = threading.Event()
        self._sup: threading.Thread | None = None
        # Event times of each run get their own window, from two days back, one after another.
        self._cursor = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)

    def start(self) -> Rig:
        self.mosquitto, self.mqtt = start_mosquitto(self.root / "mosquitto")
        settings = Settings(
            database_url=None,
            kafka_bootstrap=None,
            mqtt_url=self.mqtt.url,
            data_dir=self.root,
            topic_prefix=f"chaos{uuid.uuid4().hex[:6]}",
            api_port=0,
            partitions=self.partitions,
            log_level=self.log_level,
            # The load compresses time (a device reports every few seconds, not every few
            # minutes): the gateway's per-device flood limit would rightly drop it.
            gateway_flood_factor=0,
            # As at city scale: readings reach apps from Kafka, not re-published on MQTT.
            gateway_bridge_readings=False,
            **({"embedded_kafka_retention_s": self.kafka_retention_s} if self.kafka_retention_s else {}),
            **({"db_pool_max_lifetime_s": self.pool_lifetime_s} if self.pool_lifetime_s else {}),
        )
        self.platform = Platform.from_settings(settings, data_dir=self.root)
        # Each kill is seen and repaired by the supervisor within a second.
        self.platform.start(simulate=False, devices=self.devices, progress=False)
        self._sup = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._sup.start()
        return self

    def _supervise(self) -> None:
        assert self.platform is not None
        while not self._stop.is_set():
            self.platform.supervise_once()
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._sup is not None:
            self._sup.join(30)
        if self.platform is not None:
            self.platform.stop()
        if self.mosquitto is not None:
            self.mosquitto.stop()

    @property
    def url(self) -> str:
        assert self.platform is not None and self.platform.services.database_url
        return self.platform.services.database_url

    def next_window(self, span: timedelta) -> datetime:
        """The base event time of a new run, disjoint from every earlier run's window."""
        base = self._cursor
        self._cursor += span + timedelta(hours=1)
        return base

    def kill(self, kind: str) -> None:
        """SIGKILL one component and let its supervisor restart it."""
        assert self.platform is not None and self.mosquitto is not None and self.mqtt is not None
        if kind in ("gateway", "worker"):
            self.platform.process(kind).kill()  # the platform's supervisor restarts it
        elif kind in ("kafka", "postgres"):
            self.platform.restart_server(kind, hard=True)
        elif kind == "mosquitto":
            self.mosquitto.kill()
            self.mosquitto.respawn()
        else:
            raise ValueError(f"unknown component {kind!r}")

    def healthy(self) -> bool:
        assert self.platform is not None
        for name in ("gateway", "worker"):
            url = self.platform.health_url(name)
            try:
                with urllib.request.urlopen(url or "", timeout=3) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return True


def _stored(url: str, keys: list[tuple[str, datetime]]) -> int:
    """How many of these (device, event time) keys are in the store (-1: database down)."""
    if not keys:
        return 0
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute(
                "select count(*) from readings_air r join unnest(%s::text[], %s::timestamptz[]) k(c, t)"
                " on r.device_code = k.c and r.ts = k.t",
                ([c for c, _ in keys], [t for _, t in keys]),
            ).fetchone()
            return int(row[0]) if row else 0
    except psycopg.OperationalError:
        return -1


def _wait(check: object, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def run_kill(
    rig: Rig,
    kind: str | None,
    *,
    rate: float,
    before_s: float,
    after_s: float,
    drain_s: float = 120.0,
    probe: int = 20,
) -> KillResult:
    """One load with one kill (``None``: no kill, a baseline); the store checked against the sent log."""
    assert rig.mqtt is not None and rig.platform is not None
    step = timedelta(minutes=1)
    cfg = LoadConfig(rig.mqtt.host, rig.mqtt.port, rig.codes, rate=rate, step=step, base=datetime.now(UTC))
    # Room for twice the planned messages: a stalled sender does not catch up, but be safe.
    span = step * cfg.messages_per_device(int(2 * rate * (before_s + after_s + 30)))
    cfg = dataclasses.replace(cfg, base=rig.next_window(span))
    base = cfg.base
    _wait(rig.healthy, 90)
    load = CityLoad(cfg).start()
    recovered: list[float] = []
    t_kill = 0.0
    try:
        time.sleep(before_s)
        t_kill = time.monotonic()
        if kind is not None:
            rig.kill(kind)

        # Recovered when the first messages sent after the kill (and restart) are stored.
        def watch() -> None:
            first: list[tuple[str, datetime]] = []
            while not first and time.monotonic() - t_kill < after_s + drain_s:
                first = [(s.code, s.ts) for s in load.sent_since(t_kill)[:probe]]
                time.sleep(0.1)
            while time.monotonic() - t_kill < after_s + drain_s:
                if len(first) >= probe and _stored(rig.url, first) >= probe:
                    recovered.append(time.monotonic() - t_kill)
                    return
                if len(first) < probe:
                    first = [(s.code, s.ts) for s in load.sent_since(t_kill)[:probe]]
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(after_s)
    finally:
        report: LoadReport = load.finish(timeout=90)
    sent = [(s.code, s.ts) for s in load.log]
    _wait(lambda: _stored(rig.url, sent) >= len(set(sent)), drain_s, 1.0)
    watcher.join(5)
    return _check(rig, kind or "nothing", load, report, base, t_kill, recovered[0] if recovered else None)


def _check(
    rig: Rig,
    kind: str,
    load: CityLoad,
    report: LoadReport,
    base: datetime,
    t_kill: float,
    recovery: float | None,
) -> KillResult:
    sent_at = {(s.code, s.ts): s.at for s in load.log}
    end = max(ts for _, ts in sent_at) + timedelta(seconds=1)
    # Rules run after the readings are stored: wait until the alert transitions stop changing.
    alerts_sql = (
        "select h.alert_id, h.action from alert_history h join alerts a on a.id = h.alert_id"
        " where h.actor = 'rules' and a.device_code = any(%s) and a.opened_at >= %s and a.opened_at < %s"
    )
    args = (list(rig.codes), base, end)
    counts: list[int] = []

    def settled() -> bool:
        try:
            with psycopg.connect(rig.url, connect_timeout=3) as conn:
                counts.append(len(conn.execute(alerts_sql, args).fetchall()))
        except psycopg.OperationalError:
            return False
        return len(counts) >= 4 and counts[-1] == counts[-4]

    _wait(settled, 60, 1.0)
    with psycopg.connect(rig.url) as conn:
        rows = conn.execute(
            "select device_code, ts from readings_air where ts >= %s and ts < %s and device_code = any(%s)",
            (base, end, list(rig.codes)),
        ).fetchall()
        transitions = conn.execute(alerts_sql, args).fetchall()
    got = collections.Counter((r[0], r[1]) for r in rows)
    lost = sorted(set(sent_at) - set(got))
    alert_keys = collections.Counter((t[0], t[1]) for t in transitions)
    # Every transition the rules recorded reaches the alerts topic once (the outbox drains).
    expected = {(aid, _TRANSITIONS[action]) for aid, action in transitions if action in _TRANSITIONS}
    assert rig.platform is not None and rig.platform.services.kafka_bootstrap
    topic = KafkaTopics(rig.platform.settings.topic_prefix).alerts
    published: collections.Counter[tuple[str, str]] = collections.Counter()
    ids = {aid for aid, _ in expected}
    deadline = time.monotonic() + 60
    while ids and time.monotonic() < deadline:
        published = asyncio.run(_published(rig.platform.services.kafka_bootstrap, topic, ids))
        if expected <= set(published):
            break
        time.sleep(2)
    return KillResult(
        component=kind,
        sent=len(sent_at),
        stored=len(got),
        lost=len(lost),
        duplicated=sum(n - 1 for n in got.values() if n > 1),
        recovery_s=recovery,
        alert_transitions=len(transitions),
        alert_duplicates=sum(n - 1 for n in alert_keys.values() if n > 1),
        published_twice=sum(n - 1 for k, n in published.items() if n > 1 and k in expected),
        unpublished=len(expected - set(published)),
        unacked=report.unacked,
        resent=report.resent,
        lost_keys=lost,
        kill_at=t_kill,
        lost_sent_at=sorted(sent_at[k] - t_kill for k in lost),
    )


@contextmanager
def rig(root: Path, devices: int, log_level: str = "WARNING") -> Iterator[Rig]:
    """A started :class:`Rig`, always stopped."""
    r = Rig(root, devices, log_level=log_level)
    try:
        yield r.start()
    finally:
        r.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=250.0, help="messages per second, all devices together")
    ap.add_argument("--before", type=float, default=15.0, help="seconds of load before the kill")
    ap.add_argument("--after", type=float, default=30.0, help="seconds of load after the kill")
    ap.add_argument("--only", default="", help="comma-separated components (default: all)")
    ap.add_argument("--data-dir", type=Path, default=Path("var/chaos"))
    ap.add_argument(
        "--log-level", default="WARNING", help="the services' log level (INFO: a restarted worker logs its start-up)"
    )
    args = ap.parse_args(argv)
    kinds = [k for k in args.only.split(",") if k] or list(KINDS)
    root = args.data_dir.resolve() / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    print(
        f"chaos: {args.devices:,} devices, {args.rate:.0f} msg/s QoS 1, {args.before:.0f} s before and "
        f"{args.after:.0f} s after each kill -9; data in {root}",
        flush=True,
    )
    results = []
    with rig(root, args.devices, args.log_level) as r:
        for kind in kinds:
            res = run_kill(r, kind, rate=args.rate, before_s=args.before, after_s=args.after)
            results.append(res)
            extra = f"; lost sent at {res.lost_sent_at[:3]}…{res.lost_sent_at[-3:]} s from the kill" if res.lost else ""
            print(f"  {res.row()}  (unacked {res.unacked}, resent {res.resent}{extra})", flush=True)
    print()
    print(TABLE_HEAD)
    for res in results:
        print(res.row())
    bad = [
        res
        for res in results
        if res.lost or res.duplicated or res.alert_duplicates or res.unpublished or res.recovery_s is None
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
