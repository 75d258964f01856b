"""Devices log in to the embedded broker with ledger credentials and stay under their own code."""

from __future__ import annotations

import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from psycopg_pool import AsyncConnectionPool

from citybrain.harness import ManagedProcess, free_port, spawn
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.e2e

SERVICE = ("svc-gateway", "service-secret-0123")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def broker(database_url: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "citybrain.mqtt_broker",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database-url",
        database_url,
        "--service-user",
        ":".join(SERVICE),
        "--refresh-s",
        "1",
    ]
    proc: ManagedProcess = spawn("mqtt (ledger auth)", argv, tmp_path / "broker.log")
    try:
        assert wait_for(lambda: _port_open(port) or not proc.alive(), timeout=30), proc.log_tail()
        assert proc.alive(), proc.log_tail()
        yield port
    finally:
        proc.stop()


@pytest.fixture
async def ledger(database_url: str, models: ModelRegistry) -> AsyncIterator[Ledger]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        yield Ledger(pool, models)
    finally:
        await pool.close()


class Client:
    """A paho client that records its CONNACK, SUBACKs and messages."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.connack: list[bool] = []
        self.subacks: list[list[int]] = []
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.append(not rc.is_failure)
        self.c.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.append([int(r.value) for r in rcs])
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def test_ledger_credentials_and_topic_acl(broker: int, ledger: Ledger) -> None:
    a = DeviceCode.build("350206", "0308", 1).full
    b = DeviceCode.build("350206", "0308", 2).full
    for code in (a, b):
        await ledger.register(NewDevice(code, "air-station"), actor="test")
    secret = await ledger.rotate_credentials(a, actor="test")  # after the broker started: found on first login

    service = Client(broker, *SERVICE)
    device = Client(broker, a, secret)
    wrong = Client(broker, a, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    anonymous = Client(broker, None, None)
    try:
        assert wait_for(lambda: bool(service.connack) and bool(device.connack), timeout=20)
        assert service.connack[0] is True and device.connack[0] is True
        assert wait_for(lambda: bool(wrong.connack) and bool(anonymous.connack), timeout=20)
        assert wrong.connack[0] is False, "a wrong secret must be refused"
        assert anonymous.connack[0] is False, "anonymous clients are refused with ledger auth on"

        service.c.subscribe("citybrain/up/+/+", qos=1)
        assert wait_for(lambda: bool(service.subacks), timeout=10) and service.subacks[0] == [1]

        # Publishing under another device's code is dropped; the marker after it
        # (same client, same broker session: delivered in order) proves it never came.
        device.c.publish(f"citybrain/up/{b}/telemetry", b'{"v":1}', qos=1).wait_for_publish(10)
        device.c.publish(f"citybrain/up/{a}/telemetry", b'{"v":1,"marker":1}', qos=1).wait_for_publish(10)
        assert wait_for(lambda: f"citybrain/up/{a}/telemetry" in service.topics(), timeout=20)
        assert f"citybrain/up/{b}/telemetry" not in service.topics()

        # A device may subscribe to its own command topic only.
        device.c.subscribe(f"citybrain/cmd/{b}", qos=1)
        device.c.subscribe(f"citybrain/cmd/{a}", qos=1)
        assert wait_for(lambda: len(device.subacks) == 2, timeout=10)
        assert device.subacks == [[0x80], [1]]
    finally:
        for c in (service, device, wrong, anonymous):
            c.close()


async def test_suspended_device_is_refused(broker: int, ledger: Ledger) -> None:
    code = DeviceCode.build("350203", "0308", 9).full
    await ledger.register(NewDevice(code, "air-station"), actor="test")
    secret = await ledger.rotate_credentials(code, actor="test")
    await ledger.transition(code, "suspended", "maintenance", actor="test")
    client = Client(broker, code, secret)
    try:
        assert wait_for(lambda: bool(client.connack), timeout=20)
        assert client.connack[0] is False
    finally:
        client.close()
