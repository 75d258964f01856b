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
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from citybrain.harness import HarnessError, ManagedProcess, Services, free_port, spawn
from citybrain.migrations import upgrade
from citybrain.settings import Settings
from core.topics import KafkaTopics
from devices.code import XIAMEN_DISTRICTS, DeviceCode
from devices.models import ModelRegistry, shipped_models

__all__ = ["Platform", "create_topics", "demo_device_codes", "migrate", "register_demo_devices"]

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


async def _create_topics(bootstrap: str, topics: KafkaTopics, partitions: int, classes: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(topics.raw, partitions, 1),
            NewTopic(topics.deadletter, 1, 1),
            NewTopic(topics.alerts, partitions, 1),
        ]
        wanted += [NewTopic(topics.readings(c), partitions, 1) for c in classes]
        # Graded views (readings.{class}.public/.internal) of the classes that need them.
        from streams.downstream import plan_views

        plan = plan_views(shipped_models())
        wanted += [NewTopic(t, partitions, 1) for t in plan.kafka_topics(topics) if t.split(".")[-2] in classes]
        new = [t for t in wanted if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


def create_topics(bootstrap: str, topics: KafkaTopics, partitions: int, classes: list[str]) -> None:
    """Create the platform's Kafka topics explicitly (never rely on auto-creation)."""
    try:
        asyncio.run(_create_topics(bootstrap, topics, partitions, classes))
    except KafkaError as exc:
        raise HarnessError(f"cannot create Kafka topics on {bootstrap}: {exc}") from exc


def demo_device_codes(n: int) -> list[str]:
    """``n`` air-station codes spread over Xiamen's six districts."""
    districts = sorted(XIAMEN_DISTRICTS)
    return [DeviceCode.build(districts[i % len(districts)], "0308", 1 + i // len(districts)).full for i in range(n)]


def register_demo_devices(database_url: str, codes: list[str]) -> None:
    """Register demo air stations (idempotent)."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        for code in codes:
            c = DeviceCode.build(code[:6], code[6:10], int(code[10:16]))
            cur.execute(
                "insert into devices (code, alias, model, device_class, name, district, state, created_by, updated_by)"
                " values (%s, %s, 'air-station@1', 'air', %s, %s, 'registered', 'demo', 'demo')"
                " on conflict (code) do nothing",
                (c.full, c.body, f"Demo air station {c.sequence} ({XIAMEN_DISTRICTS[c.district]})", c.district),
            )


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
    _api_keys: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, data_dir: Path | None = None) -> Platform:
        root = (data_dir or settings.data_dir).resolve()
        services = Services(
            root,
            database_url=settings.database_url,
            mqtt_url=settings.mqtt_url,
            kafka_bootstrap=settings.kafka_bootstrap,
            # Stable per data dir (Python's hash() is salted per process), so a demo
            # restarted on the same data dir finds its database again.
            pg_name=f"pg-{zlib.crc32(str(root).encode()):08x}",
        )
        return cls(settings=settings, services=services, log_dir=root / "logs")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The platform's settings reach its service processes as their environment.
        for name, value in self.settings.model_dump().items():
            if value is not None and value != "":
                env[f"CITYBRAIN_{name.upper()}"] = str(value)
        if not self.settings.gateway_client_id:
            # A stable client id: the broker keeps a restarted gateway's unacked QoS 1 messages.
            env["CITYBRAIN_GATEWAY_CLIENT_ID"] = f"{self.settings.topic_prefix}-gateway-1"
        env.update(self.services.env())
        env["CITYBRAIN_TOPIC_PREFIX"] = self.settings.topic_prefix
        env["CITYBRAIN_PARTITIONS"] = str(self.settings.partitions)
        env["CITYBRAIN_DATA_DIR"] = str(self.services.data_dir)
        env["PYTHONUNBUFFERED"] = "1"
        if self.webhook_token:
            env["CITYBRAIN_WEBHOOK_TOKEN"] = self.webhook_token
        return env

    def start(self, *, simulate: bool = True, devices: int | None = None, progress: bool = True) -> Platform:
        """Start servers, migrate, create topics, then gateway, worker and API (and simulators)."""

        def say(msg: str) -> None:
            if progress:
                print(f"  {msg}", flush=True)

        try:
            t0 = time.monotonic()
            say("starting servers (PostgreSQL, Kafka protocol, MQTT)…")
            self.services.start()
            models = shipped_models()
            assert self.services.database_url and self.services.kafka_bootstrap
            say("migrating the database…")
            migrate(self.services.database_url, models)
            topics = KafkaTopics(self.settings.topic_prefix)
            say("creating Kafka topics…")
            create_topics(self.services.kafka_bootstrap, topics, self.settings.partitions, models.device_classes())
            n = devices if devices is not None else self.settings.demo_devices
            codes = demo_device_codes(n)
            register_demo_devices(self.services.database_url, codes)
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
            if simulate:
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
        """Restart every platform service that died; returns their names.

        Servers (Kafka, PostgreSQL, MQTT) belong to their own supervisor
        (systemd, Kubernetes, or the harness); services must recover from
        their restarts on their own.
        """
        restarted = []
        for p in self.processes:
            if not p.alive():
                log.warning("%s exited with code %s; restarting it (see %s)", p.name, p.proc.returncode, p.log_path)
                p.respawn()
                restarted.append(p.name)
        return restarted

    def process(self, name: str) -> ManagedProcess:
        for p in self.processes:
            if p.name == name:
                return p
        raise HarnessError(f"no platform process {name!r}")

    def stop(self) -> None:
        """Stop services first (so they flush), then servers."""
        while self.processes:
            self.processes.pop().stop()
        self.services.stop()

    def urls(self) -> dict[str, str]:
        mqtt = self.services.mqtt
        return {
            "console / API": f"http://127.0.0.1:{self.api_port}/",
            "API docs (OpenAPI)": f"http://127.0.0.1:{self.api_port}/docs",
            "API metrics": f"http://127.0.0.1:{self.api_port}/metrics",
            "gateway metrics": f"http://127.0.0.1:{self.gateway_port}/metrics",
            "worker metrics": f"http://127.0.0.1:{self.worker_port}/metrics",
            "MQTT": f"mqtt://{mqtt.host}:{mqtt.port}" if mqtt else "-",
            "HJ 212 (TCP)": f"127.0.0.1:{self.hj212_port}",
            "NB-IoT webhook": f"http://127.0.0.1:{self.api_port}/api/v1/ingest/webhook/{{oceanconnect|ctwing}}"
            f"  (X-Citybrain-Token: {self.webhook_token})",
            "edge metrics": f"http://127.0.0.1:{self.edge_port}/metrics",
            "Kafka": self.services.kafka_bootstrap or "-",
            "PostgreSQL": self.services.database_url or "-",
        }
