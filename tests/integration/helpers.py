"""Helpers for integration tests against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.harness import ManagedProcess, MqttEndpoint, free_port, spawn
from citybrain.security.auth import API_KEY_HEADER, Security, install
from citybrain.security.identities import IdentityStore, NewPrincipal
from core.topics import KafkaTopics
from devices.code import DeviceCode
from devices.ledger import Ledger
from devices.models import ModelRegistry
from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics

# A device and an alert that tests of the whole API may create, and a plausible value for each
# path parameter of its routes naming them: a route is then asked about something that can exist.
PATH_DEVICE = DeviceCode.build("350203", "0308", 1).full
PATH_ALERT = "path-alert-1"
PATH_VALUES = {
    "code": PATH_DEVICE,
    "alert_id": PATH_ALERT,
    "fence_id": "no-such-fence",
    "command_id": str(uuid.UUID(int=1)),
    "name": "telemetry.v1",
    "platform": "ctwing",
    "sub_id": "999999",
}


class RecordingPublisher:
    """Collects what a pipeline would send to Kafka (the broker path is covered elsewhere)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        self.sent.append((topic, key, value, list(headers or [])))

    def on(self, topic: str) -> list[bytes]:
        """The values sent to ``topic``, in order."""
        return [v for t, _, v, _ in self.sent if t == topic]


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def consume(
    bootstrap: str,
    topic: str,
    want: int,
    timeout: float = 20.0,
    predicate: Callable[[ConsumerRecord], bool] | None = None,
) -> list[ConsumerRecord]:
    """Read a topic from the start until ``want`` matching records arrived (or time out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(r for r in recs if predicate is None or predicate(r))
    finally:
        await consumer.stop()
    return out


def paho_client(client_id: str | None = None, **kw: Any) -> mqtt.Client:
    """A paho client (MQTT 3.1.1, like the devices and the gateway), not connected yet."""
    return mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
        **kw,
    )


def mqtt_client(host: str, port: int, client_id: str | None = None, **kw: Any) -> mqtt.Client:
    c = paho_client(client_id, **kw)
    c.connect(host, port, keepalive=30)
    c.loop_start()
    return c


class MqttRecorder:
    """A connected paho client recording its CONNACKs, SUBACKs and the (topic, payload) it receives.

    ``connack`` holds one bool per CONNACK (accepted or not), ``session_present``
    the flag of each accepted one, ``subacks`` the return codes of each SUBACK and
    ``disconnects`` how often the connection was lost or closed; ``connected`` and
    ``subscribed`` are set on an accepted CONNACK and on any SUBACK, ``disconnected``
    when a connection ends. The paho client itself is ``c``.
    """

    def __init__(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        *,
        reconnect_delay: tuple[int, int] | None = None,
        client_id: str | None = None,
        clean_session: bool = True,
    ) -> None:
        self.connack: list[bool] = []
        self.session_present: list[bool] = []
        self.disconnects = 0
        self.subacks: list[list[int]] = []
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.disconnected = threading.Event()
        self.c = paho_client(client_id, clean_session=clean_session)
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        if reconnect_delay:
            self.c.reconnect_delay_set(*reconnect_delay)
        self.c.connect(host, port, keepalive=30)
        self.c.loop_start()

    @classmethod
    def at(cls, ep: MqttEndpoint) -> MqttRecorder:
        """A recorder logged in to ``ep`` with its credentials."""
        return cls(ep.port, ep.username, ep.password, ep.host)

    def _on_connect(self, _c: object, _u: object, flags: mqtt.ConnectFlags, rc: mqtt.ReasonCode, _p: object) -> None:
        self.connack.append(not rc.is_failure)
        if not rc.is_failure:
            self.session_present.append(bool(flags.session_present))
            self.connected.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, _rc: mqtt.ReasonCode, _p: object) -> None:
        self.disconnects += 1
        self.disconnected.set()

    def _on_subscribe(self, _c: object, _u: object, _mid: int, rcs: list[mqtt.ReasonCode], _p: object) -> None:
        self.subacks.append([int(r.value) for r in rcs])
        self.subscribed.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, *filters: str) -> None:
        """Subscribe (QoS 1) once connected, and wait for the SUBACK."""
        assert self.connected.wait(20)
        self.subscribed.clear()
        self.c.subscribe([(f, 1) for f in filters])
        assert self.subscribed.wait(10)

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def ledger_broker(
    name: str,
    database_url: str,
    service_user: tuple[str, str],
    log_path: Path,
    *more_service_users: tuple[str, str],
) -> Iterator[tuple[ManagedProcess, int]]:
    """Run the embedded broker with ledger authentication (re-read every second); yields it and its port."""
    port = free_port()
    argv = [sys.executable, "-m", "citybrain.mqtt_broker", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--database-url", database_url, "--refresh-s", "1"]
    for user in (service_user, *more_service_users):
        argv += ["--service-user", ":".join(user)]
    proc = spawn(name, argv, log_path)
    try:
        assert wait_for(lambda: port_open(port) or not proc.alive(), timeout=30), proc.log_tail()
        assert proc.alive(), proc.log_tail()
        yield proc, port
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def open_ledger(database_url: str, models: ModelRegistry) -> AsyncIterator[Ledger]:
    """A device ledger on a small pool of its own."""
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        yield Ledger(pool, models)
    finally:
        await pool.close()


async def start_gateway(
    mqtt_endpoint: MqttEndpoint,
    bootstrap: str,
    topics: KafkaTopics,
    registry: CollectorRegistry | None = None,
    **config: Any,
) -> Gateway:
    """Create the gateway's topics and start a gateway without the downstream bridge (``config`` overrides).

    Returns once the broker has granted its uplink subscription (the SUBACK), so whatever a
    device publishes afterwards reaches it.
    """
    await create_topics(bootstrap, [topics.raw], 4)
    await create_topics(bootstrap, [topics.deadletter, topics.alerts])
    gw = Gateway(
        GatewayConfig(
            mqtt_endpoint.host,
            mqtt_endpoint.port,
            bootstrap,
            topics,
            **{
                "partitions": 4,
                "linger_ms": 10,
                "bridge": False,
                "client_id": f"gw-{uuid.uuid4().hex[:6]}",
                **config,
            },
        ),
        GatewayMetrics(registry if registry is not None else CollectorRegistry()),
    )
    await gw.start()
    try:
        await gw.wait_connected(10)
    except BaseException:
        await gw.stop()
        raise
    return gw


def wait_for(check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


async def await_for(check: Callable[[], object], timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = check()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return True
        await asyncio.sleep(interval)
    return False


# --- authentication ------------------------------------------------------------------------------


def secure(app: FastAPI, pool: AsyncConnectionPool) -> Security:
    """Install the security bundle on a test app built from a few route modules (as create_api does)."""
    security = Security.create(pool, CollectorRegistry())
    install(app, security)
    return security


async def api_key(
    pool: AsyncConnectionPool,
    role: str = "admin",
    *,
    districts: tuple[str, ...] = (),
    classes: tuple[str, ...] = (),
    name: str | None = None,
) -> dict[str, str]:
    """Create a service account with one role and grants; return its ``X-Api-Key`` header.

    Usage: ``headers = await api_key(pool, "operator", districts=("350203",))``, then
    ``httpx.AsyncClient(..., headers=headers)`` or per request.
    """
    identities = IdentityStore(pool)
    who = name or f"t-{role}-{uuid.uuid4().hex[:8]}"
    await identities.create(NewPrincipal(who, (role,), "service", districts, classes))
    issued = await identities.create_api_key(who, label="test")
    return {API_KEY_HEADER: issued.key}


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run an app under uvicorn on a free local port (for what ASGITransport cannot do: SSE); yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        assert await await_for(lambda: server.started or task.done(), timeout=30), "uvicorn did not start"
        if task.done():
            task.result()  # re-raise the start-up error
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
