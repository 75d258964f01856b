"""Bring the whole platform up: servers, schema, topics, services, simulators.

``citybrain demo`` and the end-to-end tests use this one code path. Each
platform service (gateway, stream worker, API, simulator) runs in its own
process, as in production, started through :func:`citybrain.harness.spawn`
so that none outlives the platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from citybrain.harness import AMQTT_WARNING, HarnessError, ManagedProcess, Services, free_port, spawn
from citybrain.migrations import upgrade
from citybrain.settings import Settings
from core.topics import KafkaTopics
from devices.code import XIAMEN_DISTRICTS, DeviceCode
from devices.models import ModelRegistry, shipped_models

__all__ = ["Platform", "create_topics", "demo_device_codes", "migrate", "register_demo_devices", "register_fleet"]

log = logging.getLogger(__name__)


def _port_free(host: str, port: int) -> bool:
    """Whether the API could listen on ``host:port`` now.

    The check binds as the server will (uvicorn sets SO_REUSEADDR), so sockets a
    previous run left in TIME-WAIT do not count as busy and a restart within a
    minute keeps the documented port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def migrate(database_url: str, models: ModelRegistry) -> list[int]:
    """Run ``citybrain db upgrade`` against a database."""
    with psycopg.connect(database_url, autocommit=False) as conn:
        return upgrade(conn, models)


async def _create_topics(
    bootstrap: str, topics: KafkaTopics, partitions: int, classes: list[str], retention_ms: int | None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [(topics.raw, partitions), (topics.deadletter, 1), (topics.alerts, partitions)]
        names += [(topics.readings(c), partitions) for c in classes]
        # Graded views (readings.{class}.public/.internal) of the classes that need them.
        from streams.downstream import plan_views

        plan = plan_views(shipped_models())
        names += [(t, partitions) for t in plan.kafka_topics(topics) if t.split(".")[-2] in classes]
        # Retention deletes whole segments whose newest record is older than retention.ms, as in
        # Kafka (noida-db too): a topic written all the time never closes its active segment
        # unless segment.ms rolls it. A fifth of the retention: the log holds at most 1.2 × it.
        configs = {"retention.ms": str(retention_ms), "segment.ms": str(retention_ms // 5)} if retention_ms else {}
        new = [NewTopic(n, p, 1, topic_configs=configs) for n, p in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        old = [n for n, _ in names if n in existing]
        if configs and old:
            # A demo restarted on the same data dir keeps its topics: bound them as well.
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, n, configs) for n in old])
    finally:
        await admin.close()


def create_topics(
    bootstrap: str, topics: KafkaTopics, partitions: int, classes: list[str], *, retention_ms: int | None = None
) -> None:
    """Create the platform's Kafka topics explicitly (never rely on auto-creation).

    Args:
        retention_ms: ``retention.ms`` of every topic, with ``segment.ms`` a fifth of it (None:
            the broker's defaults). For the embedded broker only, which keeps its whole log in
            memory; a real Kafka's retention is set per topic as docs/operations.md says.
    """
    try:
        asyncio.run(_create_topics(bootstrap, topics, partitions, classes, retention_ms))
    except KafkaError as exc:
        raise HarnessError(f"cannot create Kafka topics on {bootstrap}: {exc}") from exc


def demo_device_codes(n: int) -> list[str]:
    """``n`` air-station codes spread over Xiamen's six districts."""
    districts = sorted(XIAMEN_DISTRICTS)
    return [DeviceCode.build(districts[i % len(districts)], "0308", 1 + i // len(districts)).full for i in range(n)]


def register_demo_devices(database_url: str, codes: list[str], *, located: bool = False) -> None:
    """Register demo air stations (idempotent); ``located`` puts each near its district's label point.

    One statement per 50,000 devices (arrays), so a benchmark's million-device ledger
    is registered in seconds rather than a round trip per device.
    """
    points = _label_points() if located else {}
    with psycopg.connect(database_url) as conn:
        for i in range(0, len(codes), _REGISTER_CHUNK):
            cols: tuple[list[Any], ...] = ([], [], [], [], [], [])
            for code in codes[i : i + _REGISTER_CHUNK]:
                c = DeviceCode.build(code[:6], code[6:10], int(code[10:16]))
                lon, lat = points.get(c.district, (None, None))
                for col, v in zip(
                    cols,
                    (
                        c.full,
                        c.body,
                        f"Demo air station {c.sequence} ({XIAMEN_DISTRICTS[c.district]})",
                        c.district,
                        lon,
                        lat,
                    ),
                    strict=True,
                ):
                    col.append(v)
            conn.execute(
                "insert into devices (code, alias, model, device_class, name, district, state, lon, lat,"
                " created_by, updated_by)"
                " select u.code, u.alias, 'air-station@1', 'air', u.name, u.district, 'registered', u.lon, u.lat,"
                " 'demo', 'demo' from unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[],"
                " %s::float8[]) as u(code, alias, name, district, lon, lat)"
                " on conflict (code) do nothing",
                cols,
            )
            conn.commit()


#: Demo devices registered per statement.
_REGISTER_CHUNK = 50_000


def _label_points() -> dict[str, tuple[float, float]]:
    from geo.districts import load_districts

    out = {}
    for d in load_districts():
        p = d.geometry.representative_point()
        out[d.code] = (round(float(p.x), 6), round(float(p.y), 6))
    return out


def register_fleet(database_url: str, size: str, seed: int) -> tuple[int, int]:
    """Import the demo's located fleet (``simulators.xiamen``) through the ledger's bulk import.

    The import checks every row (district of the code against the point, model attributes);
    water stations, which report over HJ 212 TCP, get their PW. Idempotent. Returns the
    fleet's size and how many of its stations speak HJ 212.

    Raises:
        HarnessError: the ledger refused a row.
    """
    from simulators.fleet import DEFAULT_HJ212_MODELS
    from simulators.score import register_sites
    from simulators.xiamen import city_fleet

    sites = city_fleet(size, seed)
    hj212 = [s.code for s in sites if s.model_id in DEFAULT_HJ212_MODELS]
    with psycopg.connect(database_url) as conn:
        report = register_sites(conn, sites, actor="demo", hj212_codes=hj212)
    if report.issues:
        first = report.issues[0]
        raise HarnessError(f"the ledger refused {len(report.issues)} demo device(s); line {first.line}: {first.reason}")
    return len(sites), len(hj212)


#: Services that join Kafka consumer groups (their members must leave when they die).
_GROUP_MEMBERS = frozenset({"gateway", "worker"})

#: The signal that promotes a standby worker (``citybrain worker --standby``).
PROMOTE_SIGNAL = signal.SIGUSR1


def _armed(pid: int) -> bool:
    """Whether a standby process blocks or catches the promotion signal yet (before, it would die of it).

    Linux: read from ``/proc/<pid>/status`` (``SigBlk``, ``SigCgt``); elsewhere never, so a
    dead worker is restarted the ordinary way.
    """
    bit = 1 << (PROMOTE_SIGNAL - 1)
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith(("SigBlk:", "SigCgt:")) and int(line.split()[1], 16) & bit for line in f)
    except (OSError, ValueError):
        return False


@dataclass
class _Health:
    """What the supervisor knows about one service's /healthz."""

    url: str
    seen_healthy: bool = False
    failing_since: float | None = None
    slow_since: float | None = None


def _http_health(url: str, timeout: float = 2.0) -> str:
    """``ok`` (200), ``slow`` (no answer in time: busy, or hung) or ``bad`` (refused, or not 200)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return "ok" if r.status == 200 else "bad"
    except TimeoutError:
        return "slow"
    except urllib.error.URLError as exc:
        return "slow" if isinstance(exc.reason, TimeoutError) else "bad"
    except OSError:
        return "bad"


@dataclass
class Platform:
    """A running platform: servers plus service processes."""

    settings: Settings
    services: Services
    processes: list[ManagedProcess] = field(default_factory=list)
    api_port: int = 0
    gateway_port: int = 0
    worker_port: int = 0
    edge_port: int = 0
    hj212_port: int = 0
    webhook_token: str = ""
    log_dir: Path = Path("var/logs")
    #: A service whose /healthz has failed this long (after it was once healthy, or
    #: after ``startup_grace_s``) is killed and restarted by :meth:`supervise_once`.
    unhealthy_restart_s: float = 20.0
    #: How long a (re)started service may take to become healthy the first time.
    startup_grace_s: float = 90.0
    #: Keep a warm spare stream worker (``citybrain worker --standby``: imported and built, not
    #: connected) and promote it when the worker dies: a restart spends most of its time, on a
    #: loaded machine, importing (docs/operations.md, "Kill -9").
    worker_standby: bool = True
    _standby: ManagedProcess | None = field(default=None, repr=False)
    _api_keys: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = field(default_factory=dict, repr=False)
    _health: dict[str, _Health] = field(default_factory=dict, repr=False)
    _dead_pids: set[int] = field(default_factory=set, repr=False)
    # supervise_once and restart_server change the same processes (the supervisor runs in a thread).
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, data_dir: Path | None = None, *, mqtt_broker: str = "amqtt") -> Platform:
        """A platform for these settings; ``mqtt_broker`` as in :class:`citybrain.harness.Services`.

        ``citybrain demo`` passes ``auto``: a private Mosquitto whenever it is installed.
        """
        root = (data_dir or settings.data_dir).resolve()
        services = Services(
            root,
            database_url=settings.database_url,
            mqtt_url=settings.mqtt_url,
            kafka_bootstrap=settings.kafka_bootstrap,
            # Stable per data dir (Python's hash() is salted per process), so a demo
            # restarted on the same data dir finds its database again.
            pg_name=f"pg-{zlib.crc32(str(root).encode()):08x}",
            # Under CITYBRAIN_DATA_DIR: `make clean` removes the database with the rest of the state.
            pg_in_data_dir=True,
            mqtt_broker=mqtt_broker,
        )
        return cls(settings=settings, services=services, log_dir=root / "logs", worker_standby=settings.worker_standby)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The platform's settings reach its service processes as their environment.
        for name, value in self.settings.model_dump().items():
            if value is not None and value != "":
                env[f"CITYBRAIN_{name.upper()}"] = str(value)
        if not self.settings.gateway_client_id:
            # A stable client id: the broker keeps a restarted gateway's unacked QoS 1 messages.
            env["CITYBRAIN_GATEWAY_CLIENT_ID"] = f"{self.settings.topic_prefix}-gateway-1"
        if not self.settings.kafka_bootstrap and not self.settings.gateway_kafka_replay_s:
            # The embedded broker (noida-db) acknowledges before its log is safe (it snapshots its
            # whole state now and then) and loses what came since on kill -9: the gateway keeps
            # copies of what it acknowledged for a minute and resends what the log lost.
            env["CITYBRAIN_GATEWAY_KAFKA_REPLAY_S"] = "60"
        env.update(self.services.env())
        env["CITYBRAIN_TOPIC_PREFIX"] = self.settings.topic_prefix
        env["CITYBRAIN_PARTITIONS"] = str(self.settings.partitions)
        env["CITYBRAIN_DATA_DIR"] = str(self.services.data_dir)
        env["PYTHONUNBUFFERED"] = "1"
        if self.webhook_token:
            env["CITYBRAIN_WEBHOOK_TOKEN"] = self.webhook_token
        return env

    def start(
        self,
        *,
        simulate: bool = True,
        devices: int | None = None,
        progress: bool = True,
        fleet: str | None = None,
        speed: float = 1.0,
        seed: int = 42,
        start: datetime | None = None,
    ) -> Platform:
        """Start servers, migrate, create topics, then gateway, worker and API (and simulators).

        Args:
            simulate: Run simulated devices.
            devices: Demo air stations registered without a location; when ``fleet`` is
                unset, the simulator drives them every ``demo_interval_s`` (tests use it).
            progress: Print what it does.
            fleet: Size of the located Xiamen fleet (``small``, ``city``, ``large``) to
                register and, with ``simulate``, run at its models' cadences. The
                ``devices`` stations are then located, left to the user (README example).
            speed: Simulated seconds per wall second of the fleet (1: real time).
            seed: Seed of the fleet's placement and traffic.
            start: Simulated start time of the fleet (default: now). With ``speed`` > 1 a start in
                the past keeps event times behind the wall clock for a while (the quiet-day run).
        """

        def say(msg: str) -> None:
            if progress:
                print(f"  {msg}", flush=True)

        try:
            t0 = time.monotonic()
            say("starting servers (PostgreSQL, Kafka protocol, MQTT)…")
            self.services.start()
            if self.services.processes and self.services.processes[-1].name == "mqtt (amqtt)":
                say(AMQTT_WARNING)
            models = shipped_models()
            assert self.services.database_url and self.services.kafka_bootstrap
            say("migrating the database…")
            migrate(self.services.database_url, models)
            topics = KafkaTopics(self.settings.topic_prefix)
            say("creating Kafka topics…")
            # noida-db (embedded) keeps its whole log in memory and honours retention.ms: bound it,
            # or its memory grows with everything ever sent. A real Kafka keeps its own settings.
            embedded = not self.settings.kafka_bootstrap
            create_topics(
                self.services.kafka_bootstrap,
                topics,
                self.settings.partitions,
                models.device_classes(),
                retention_ms=int(self.settings.embedded_kafka_retention_s * 1000) if embedded else None,
            )
            if fleet is None:
                n = devices if devices is not None else self.settings.demo_devices
                register_demo_devices(self.services.database_url, demo_device_codes(n))
            else:
                register_demo_devices(self.services.database_url, demo_device_codes(devices or 1), located=True)
                say(f"registering the {fleet} fleet of located devices…")
                n, stations = register_fleet(self.services.database_url, fleet, seed)
                limit = self.settings.hj212_max_connections_per_address
                if limit and limit < stations + 8:
                    # Every simulated station connects from 127.0.0.1; in the field each has its own address.
                    self.settings = self.settings.model_copy(update={"hj212_max_connections_per_address": stations + 8})
            # The demo's webhook needs a token; a random one unless one is configured.
            self.webhook_token = self.settings.webhook_token or secrets.token_urlsafe(16)
            env = self.env()
            self.gateway_port = free_port()
            self.edge_port = free_port()
            self.hj212_port = self.settings.hj212_port or free_port()
            self.worker_port = free_port()
            self.api_port = self.settings.api_port or free_port()
            if not _port_free(self.settings.api_host, self.api_port):
                say(f"port {self.api_port} is busy; the API takes a free port instead")
                self.api_port = free_port()
            py = sys.executable
            say("starting gateway, stream worker and API…")
            self.processes.append(
                spawn(
                    "gateway",
                    [py, "-m", "citybrain.cli", "gateway", "--metrics-port", str(self.gateway_port)],
                    self.log_dir / "gateway.log",
                    env=env,
                )
            )
            self.processes.append(
                spawn(
                    "worker",
                    [py, "-m", "citybrain.cli", "worker", "--web-port", str(self.worker_port)],
                    self.log_dir / "worker.log",
                    env=env,
                )
            )
            self.processes.append(
                spawn(
                    "api",
                    [py, "-m", "citybrain.cli", "api", "--port", str(self.api_port), "--host", self.settings.api_host],
                    self.log_dir / "api.log",
                    env=env,
                )
            )
            self.processes.append(
                spawn(
                    "edge",
                    [
                        py,
                        "-m",
                        "citybrain.cli",
                        "edge",
                        "--hj212-port",
                        str(self.hj212_port),
                        "--metrics-port",
                        str(self.edge_port),
                    ],
                    self.log_dir / "edge.log",
                    env=env,
                )
            )
            self.wait_http(f"http://127.0.0.1:{self.api_port}/healthz", "API", 60)
            self.wait_http(f"http://127.0.0.1:{self.edge_port}/healthz", "edge (HJ 212, commands)", 60)
            self.wait_http(f"http://127.0.0.1:{self.gateway_port}/healthz", "gateway", 60)
            self.wait_http(f"http://127.0.0.1:{self.worker_port}/healthz", "stream worker", 90)
            if simulate and fleet is not None:
                say(f"starting {n} simulated devices (HJ 212 water stations over TCP)…")
                self.processes.append(
                    spawn(
                        "simulator",
                        [
                            py,
                            "-m",
                            "citybrain.cli",
                            "simulate",
                            "--size",
                            fleet,
                            "--seed",
                            str(seed),
                            "--speed",
                            str(speed),
                            # Until stopped: a century of simulated time.
                            "--sim-duration",
                            str(100 * 365 * 86400),
                            "--hj212",
                            f"127.0.0.1:{self.hj212_port}",
                            "--quiet",
                            *(["--start", start.isoformat()] if start is not None else []),
                        ],
                        self.log_dir / "simulator.log",
                        env=env,
                    )
                )
            elif simulate:
                say(f"starting {n} simulated air stations…")
                self.processes.append(
                    spawn(
                        "simulator",
                        [
                            py,
                            "-m",
                            "citybrain.cli",
                            "simulate",
                            "--devices",
                            str(n),
                            "--interval",
                            str(self.settings.demo_interval_s),
                        ],
                        self.log_dir / "simulator.log",
                        env=env,
                    )
                )
            say(f"platform up in {time.monotonic() - t0:.1f}s")
        except BaseException:
            self.stop()
            raise
        return self

    def add_user(
        self, name: str, role: str, *, districts: tuple[str, ...] = (), classes: tuple[str, ...] = ()
    ) -> tuple[str, str]:
        """Create a console/API user (as ``citybrain users add`` would); returns (name, password).

        ``districts`` and ``classes`` are its grants (empty: all), as ``--district`` / ``--class``.
        A name already taken (a demo restarted on the same data) gets a suffix.
        """
        grants = [arg for d in sorted(districts) for arg in ("--district", d)]
        grants += [arg for c in sorted(classes) for arg in ("--class", c)]
        for attempt in range(5):
            candidate = name if attempt == 0 else f"{name}-{secrets.token_hex(2)}"
            res = subprocess.run(
                [sys.executable, "-m", "citybrain.cli", "users", "add", candidate, "--role", role, *grants],
                env=self.env(),
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode == 0:
                return candidate, res.stdout.strip().splitlines()[-1].rsplit(": ", 1)[1]
        raise HarnessError(f"could not create user {name}: {res.stderr.strip()}")

    def api_key(self, role: str = "admin", *, districts: tuple[str, ...] = (), classes: tuple[str, ...] = ()) -> str:
        """An API key (``X-Api-Key`` header) of a service account with this role and grants.

        Created on first use (as ``citybrain users add NAME --role R --service`` would)
        and reused for the same role and grants; every API route but /healthz,
        /metrics, the console page and the webhook needs one (or a session).
        """
        wanted = (role, tuple(sorted(districts)), tuple(sorted(classes)))
        found = self._api_keys.get(wanted)
        if found is not None:
            return found
        args = ["--role", role, "--service"]
        for d in wanted[1]:
            args += ["--district", d]
        for c in wanted[2]:
            args += ["--class", c]
        name = f"svc-{role}-{secrets.token_hex(3)}"
        res = subprocess.run(
            [sys.executable, "-m", "citybrain.cli", "users", "add", name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise HarnessError(f"could not create service account {name}: {res.stderr.strip()}")
        key = res.stdout.strip().splitlines()[-1].rsplit(": ", 1)[1]
        self._api_keys[wanted] = key
        return key

    def wait_http(self, url: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for p in self.processes:
                if not p.alive():
                    raise HarnessError(f"{p.name} exited (code {p.proc.returncode}); log {p.log_path}:\n{p.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise HarnessError(f"{what} not healthy at {url} within {timeout:.0f}s ({last})")

    def supervise_once(self) -> list[str]:
        """Restart every platform service that died or stayed unhealthy; returns their names.

        A service is judged by its /healthz, not only by whether its process lives:
        one that answered healthy and then refused or answered "unhealthy" for
        ``unhealthy_restart_s`` (or left it unanswered six times as long: a saturated
        service answers late and is not restarted for it), or never became healthy within
        ``startup_grace_s`` of its start, is killed and restarted.

        Before a Kafka client (gateway, worker) is restarted, its consumer-group members
        are evicted: Apache Kafka expires a dead member after its session timeout, the
        embedded broker (noida-db) never does, and a group waiting for a member killed
        with ``-9`` would keep the restarted worker from ever getting its partitions
        (:func:`citybrain.kafka_compat.evict_dead_members`).

        Servers (Kafka, PostgreSQL, MQTT) belong to their own supervisor
        (systemd, Kubernetes, or the harness); services must recover from
        their restarts on their own.
        """
        with self._lock:
            return self._supervise_once()

    def _supervise_once(self) -> list[str]:
        restarted = []
        now = time.monotonic()
        # The dead first: each health probe may wait seconds for a saturated service's answer.
        for p in sorted(self.processes, key=lambda q: q.alive()):
            if p.alive():
                reason = self._unhealthy(p, now)
                if reason is None:
                    continue
                log.warning("%s is unhealthy (%s); killing and restarting it (see %s)", p.name, reason, p.log_path)
                p.kill()
            else:
                log.warning("%s exited with code %s; restarting it (see %s)", p.name, p.proc.returncode, p.log_path)
            if p.name in _GROUP_MEMBERS:
                self._dead_pids.add(p.pid)
            self._evict_dead()
            if not (p.name == "worker" and self._promote(p)):
                p.respawn()
            self._health.pop(p.name, None)
            restarted.append(p.name)
        if self._dead_pids:
            self._evict_dead()  # the broker was down at the time: try again
        self._keep_standby()
        return restarted

    def _promote(self, worker: ManagedProcess) -> bool:
        """Let the standby worker take the dead worker's place; False if there is none ready."""
        standby, self._standby = self._standby, None
        if standby is None:
            return False
        if not (standby.alive() and _armed(standby.pid)):
            standby.stop(timeout=2)
            return False
        os.kill(standby.pid, PROMOTE_SIGNAL)
        log.warning("worker: standby (pid %d) promoted in place of pid %d", standby.pid, worker.pid)
        # The standby's log becomes the worker's; the next standby writes to the other file.
        worker.proc, worker.log_path, worker.started_at = standby.proc, standby.log_path, time.monotonic()
        worker.restarts += 1
        return True

    def _keep_standby(self) -> None:
        """Start a standby worker once the worker is healthy and none is waiting.

        Not before: on a loaded machine a standby importing beside a worker that is starting
        would slow the start down.
        """
        if not self.worker_standby:
            return
        worker = next((p for p in self.processes if p.name == "worker"), None)
        health = self._health.get("worker")
        if worker is None or health is None or not health.seen_healthy or not worker.alive():
            return
        if self._standby is not None and self._standby.alive():
            return
        other = "worker.log" if worker.log_path.name != "worker.log" else "worker.standby.log"
        self._standby = spawn(
            "worker (standby)", [*worker.argv, "--standby"], worker.log_path.with_name(other), env=worker.env
        )

    def restart_server(self, kind: str, *, hard: bool = True, rewind_s: float = 10.0) -> None:
        """Kill (``-9`` when ``hard``) a server the harness started, start it again, and recover the services.

        ``kafka``: the embedded broker (noida-db) acknowledges records before its log is
        safe, so a ``kill -9`` can cut the tail off its log; records written after its
        restart then take offsets the stream workers had already passed, and a worker
        resuming at its position would skip them. So the workers are stopped, their
        group is rewound to the records written ``rewind_s`` before the kill (read twice,
        merged once), and they are started again. Apache Kafka with replication loses no
        acknowledged record and needs none of this.

        Args:
            kind: ``kafka`` or ``postgres``.
            hard: SIGKILL, else the server's own stop signal.
            rewind_s: How far before the kill the workers read again (Kafka only).
        """
        with self._lock:
            killed_at = time.time()
            self.services.restart(kind, hard=hard)
            if kind != "kafka" or not self.services.kafka_bootstrap:
                return
            from citybrain.kafka_compat import rewind_group

            workers = [p for p in self.processes if p.name == "worker"]
            for w in workers:
                w.kill()
                self._dead_pids.add(w.pid)
            self._evict_dead()
            topics = KafkaTopics(self.settings.topic_prefix)
            if self.settings.worker_role == "alerts":
                group = f"{self.settings.topic_prefix}-streams-alerts"
                names = [topics.readings(c) for c in shipped_models().device_classes()]
            else:
                group = f"{self.settings.topic_prefix}-streams"
                names = [topics.raw]
            since_ms = int((killed_at - rewind_s) * 1000)
            try:
                offsets = rewind_group(self.services.kafka_bootstrap, group, names, since_ms)
                log.warning("Kafka restarted: group %s rewound to %s", group, offsets)
            except Exception as exc:  # the workers must come back whatever happened
                log.error("Kafka restarted, but group %s could not be rewound: %s", group, exc)
            for w in workers:
                w.respawn()
                self._health.pop(w.name, None)

    def health_url(self, name: str) -> str | None:
        """The /healthz URL of a platform service (None: it has none)."""
        port = {
            "gateway": self.gateway_port,
            "worker": self.worker_port,
            "api": self.api_port,
            "edge": self.edge_port,
        }.get(name, 0)
        return f"http://127.0.0.1:{port}/healthz" if port else None

    def _unhealthy(self, p: ManagedProcess, now: float) -> str | None:
        """Why a live service should be restarted, or None."""
        url = self.health_url(p.name)
        if url is None:
            return None
        h = self._health.setdefault(p.name, _Health(url))
        state = _http_health(url)
        if state == "ok":
            h.seen_healthy, h.failing_since, h.slow_since = True, None, None
            return None
        if not h.seen_healthy:
            waited = now - p.started_at
            return f"not healthy {waited:.0f}s after its start" if waited > self.startup_grace_s else None
        if state == "slow":
            # A service saturated by load answers late; restarting it would only add to the
            # load. Only one that stays silent for much longer is taken for hung.
            if h.slow_since is None:
                h.slow_since = now
            slow = now - h.slow_since
            return f"/healthz unanswered for {slow:.0f}s" if slow > 6 * self.unhealthy_restart_s else None
        if h.failing_since is None:
            h.failing_since = now
        failing = now - h.failing_since
        return f"/healthz failing for {failing:.0f}s" if failing > self.unhealthy_restart_s else None

    def _evict_dead(self) -> None:
        bootstrap = self.services.kafka_bootstrap
        if not bootstrap:
            return
        from citybrain.kafka_compat import evict_dead_members

        for pid in sorted(self._dead_pids):
            if evict_dead_members(bootstrap, pid, timeout_s=5.0) is not None:
                self._dead_pids.discard(pid)

    def process(self, name: str) -> ManagedProcess:
        for p in self.processes:
            if p.name == name:
                return p
        raise HarnessError(f"no platform process {name!r}")

    def stop(self) -> None:
        """Stop services first (so they flush), then servers."""
        with self._lock:
            standby, self._standby = self._standby, None
        if standby is not None:
            standby.stop()
        while self.processes:
            self.processes.pop().stop()
        self.services.stop()

    def _mqtt_broker_name(self) -> str:
        for p in self.services.processes:
            if p.name.startswith("mqtt ("):
                return p.name[len("mqtt (") : -1]
        return "external"

    def urls(self) -> dict[str, str]:
        mqtt = self.services.mqtt
        return {
            "console / API": f"http://127.0.0.1:{self.api_port}/",
            "API docs (OpenAPI)": f"http://127.0.0.1:{self.api_port}/docs",
            "API metrics": f"http://127.0.0.1:{self.api_port}/metrics",
            "gateway metrics": f"http://127.0.0.1:{self.gateway_port}/metrics",
            "worker metrics": f"http://127.0.0.1:{self.worker_port}/metrics",
            "MQTT": f"mqtt://{mqtt.host}:{mqtt.port}  ({self._mqtt_broker_name()})" if mqtt else "-",
            "HJ 212 (TCP)": f"127.0.0.1:{self.hj212_port}",
            "NB-IoT webhook": f"http://127.0.0.1:{self.api_port}/api/v1/ingest/webhook/{{oceanconnect|ctwing}}"
            f"  (X-Citybrain-Token: {self.webhook_token})",
            "edge metrics": f"http://127.0.0.1:{self.edge_port}/metrics",
            "Kafka": self.services.kafka_bootstrap or "-",
            "PostgreSQL": self.services.database_url or "-",
        }
