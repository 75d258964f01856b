"""Device authentication and topic ACLs on real brokers: Mosquitto (rendered files) and amqtt (ledger plugin).

The same device-side assertions run against both brokers:

* a device logs in with its ledger credential and its uplinks arrive;
* publishing under another device's code is dropped (never delivered);
* a wrong secret and an anonymous client are refused at CONNECT;
* subscribing to another device's command topic yields nothing.

Mosquitto gets its ``password_file``/``acl_file`` from ``citybrain devices
mosquitto-files`` and re-reads them on SIGHUP after the ledger changed; the
service roles (gateway, downstream) are Mosquitto-only (amqtt lets every service
account use every topic).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from citybrain.devices_cli import register
from citybrain.harness import ManagedProcess, reload_mosquitto, start_mosquitto
from citybrain.settings import Settings
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from tests.integration.helpers import MqttRecorder, ledger_broker, open_ledger, wait_for

pytestmark = pytest.mark.integration

GATEWAY = ("cb-gateway", "gateway-secret-0123")
DOWNSTREAM = ("cb-bridge", "bridge-secret-0123")

_HAS_MOSQUITTO = bool(shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin"))


def _client(port: int, username: str | None, password: str | None) -> MqttRecorder:
    # A refused client would otherwise reconnect every second and flood the log.
    return MqttRecorder(port, username, password, reconnect_delay=(5, 10))


@dataclass
class Broker:
    """A broker with device authentication, and how to refresh it after a ledger change."""

    kind: str
    port: int
    proc: ManagedProcess
    database_url: str
    files: Path | None = None

    def refresh(self) -> None:
        """Make the broker see the ledger as it is now."""
        if self.kind == "mosquitto":
            assert self.files is not None
            assert render_files(self.database_url, self.files) == 0
            reload_mosquitto(self.proc)
            time.sleep(0.5)  # SIGHUP is asynchronous
        else:
            time.sleep(2.5)  # the amqtt plugin re-reads changed rows every --refresh-s (1 s here)


def render_files(database_url: str, out: Path) -> int:
    """``citybrain devices mosquitto-files --out OUT`` with the gateway and a downstream bridge account."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "devices",
            "mosquitto-files",
            "--out",
            str(out),
            "--gateway-user",
            ":".join(GATEWAY),
            "--downstream-user",
            ":".join(DOWNSTREAM),
        ]
    )
    return int(args.func(args, Settings(database_url=database_url)))


@pytest.fixture
async def ledger(database_url: str, models: ModelRegistry) -> AsyncIterator[Ledger]:
    async with open_ledger(database_url, models) as ledger:
        yield ledger


@pytest.fixture
async def devices(ledger: Ledger) -> dict[str, str]:
    """Two registered air stations; ``a`` has a credential. Code → secret ("" for none)."""
    a = DeviceCode.build("350206", "0308", 1).full
    b = DeviceCode.build("350206", "0308", 2).full
    for code in (a, b):
        await ledger.register(NewDevice(code, "air-station"), actor="test")
    return {a: await ledger.rotate_credentials(a, actor="test"), b: ""}


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(
    request: pytest.FixtureRequest, database_url: str, devices: dict[str, str], tmp_path: Path
) -> Iterator[Broker]:
    if request.param == "mosquitto":
        if not _HAS_MOSQUITTO:
            pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto)")
        files = tmp_path / "auth"
        assert render_files(database_url, files) == 0
        proc, ep = start_mosquitto(tmp_path / "mosquitto", password_file=files / "passwd", acl_file=files / "acl")
        try:
            yield Broker("mosquitto", ep.port, proc, database_url, files)
        finally:
            proc.stop()
        return
    with ledger_broker("mqtt (amqtt, ledger auth)", database_url, GATEWAY, tmp_path / "amqtt.log") as (proc, port):
        yield Broker("amqtt", port, proc, database_url)


def _wrong(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


def test_device_credentials_and_topic_acl(broker: Broker, devices: dict[str, str]) -> None:
    (a, secret), (b, _) = devices.items()
    gateway = _client(broker.port, *GATEWAY)
    device = _client(broker.port, a, secret)
    wrong = _client(broker.port, a, _wrong(secret))
    anonymous = _client(broker.port, None, None)
    clients = [gateway, device, wrong, anonymous]
    try:
        assert wait_for(lambda: all(c.connack for c in clients), timeout=20), [c.connack for c in clients]
        assert gateway.connack[0] is True and device.connack[0] is True
        assert wrong.connack[0] is False, "a wrong secret must be refused at CONNECT"
        assert anonymous.connack[0] is False, "anonymous clients must be refused"

        gateway.c.subscribe("citybrain/up/+/+", qos=1)
        assert wait_for(lambda: bool(gateway.subacks), timeout=10) and gateway.subacks[0] == [1]

        # Under another device's code: dropped. The marker after it (same client, same
        # session: delivered in order) proves the spoofed message never came.
        device.c.publish(f"citybrain/up/{b}/telemetry", b'{"v":1}', qos=1).wait_for_publish(10)
        device.c.publish(f"citybrain/up/{a}/telemetry", b'{"v":1,"marker":1}', qos=1).wait_for_publish(10)
        assert wait_for(lambda: f"citybrain/up/{a}/telemetry" in gateway.topics(), timeout=20)
        assert f"citybrain/up/{b}/telemetry" not in gateway.topics()
        assert (f"citybrain/up/{a}/telemetry", b'{"v":1,"marker":1}') in gateway.messages

        # Another device's command topic yields nothing; its own commands arrive.
        device.c.subscribe(f"citybrain/cmd/{b}", qos=1)
        device.c.subscribe(f"citybrain/cmd/{a}", qos=1)
        assert wait_for(lambda: len(device.subacks) == 2, timeout=10)
        # amqtt answers 0x80 (refused); Mosquitto 2.0 grants the subscription but never delivers.
        assert device.subacks[0] in ([0x80], [1]) and device.subacks[1] == [1]
        gateway.c.publish(f"citybrain/cmd/{b}", b'{"cmd":"for-b"}', qos=1).wait_for_publish(10)
        gateway.c.publish(f"citybrain/cmd/{a}", b'{"cmd":"for-a"}', qos=1).wait_for_publish(10)
        assert wait_for(lambda: f"citybrain/cmd/{a}" in device.topics(), timeout=20)
        assert f"citybrain/cmd/{b}" not in device.topics()
    finally:
        for c in clients:
            c.close()


async def test_ledger_changes_reach_the_broker(broker: Broker, ledger: Ledger, devices: dict[str, str]) -> None:
    """After a refresh (SIGHUP on Mosquitto) a new credential works and a revoked one is dead, even mid-session."""
    (a, old_secret), (b, _) = devices.items()
    gateway = _client(broker.port, *GATEWAY)
    connected = _client(broker.port, a, old_secret)  # logged in before the revocation
    clients = [gateway, connected]
    try:
        assert wait_for(lambda: bool(gateway.connack) and bool(connected.connack), timeout=20)
        assert connected.connack[0] is True
        gateway.c.subscribe("citybrain/up/+/+", qos=1)
        assert wait_for(lambda: bool(gateway.subacks), timeout=10)

        secret_b = await ledger.rotate_credentials(b, actor="test")
        await ledger.revoke_credentials(a, actor="test")
        broker.refresh()
        new = _client(broker.port, b, secret_b)
        revoked = _client(broker.port, a, old_secret)
        clients += [new, revoked]
        assert wait_for(lambda: bool(new.connack) and bool(revoked.connack), timeout=20)
        assert new.connack[0] is True, "a credential rotated in the ledger must work after the refresh"
        assert revoked.connack[0] is False, "a revoked credential must stop working after the refresh"

        # The session opened before the revocation: Mosquitto closes it on SIGHUP,
        # amqtt keeps it but drops its publishes. Either way nothing arrives.
        connected.c.publish(f"citybrain/up/{a}/telemetry", b"after-revocation", qos=1)
        new.c.publish(f"citybrain/up/{b}/telemetry", b"marker", qos=1).wait_for_publish(10)
        assert wait_for(lambda: f"citybrain/up/{b}/telemetry" in gateway.topics(), timeout=20)
        await asyncio.sleep(0.5)
        assert f"citybrain/up/{a}/telemetry" not in gateway.topics()
    finally:
        for c in clients:
            c.close()


@pytest.mark.skipif(not _HAS_MOSQUITTO, reason="mosquitto is not installed")
def test_mosquitto_service_roles(database_url: str, devices: dict[str, str], tmp_path: Path) -> None:
    """The gateway reads uplinks and sends commands; a downstream bridge only reads down/ and alerts/."""
    (a, secret), _ = devices.items()
    files = tmp_path / "auth"
    assert render_files(database_url, files) == 0
    acl = (files / "acl").read_text()
    assert f"user {GATEWAY[0]}\ntopic read citybrain/up/#\ntopic write citybrain/cmd/#" in acl
    assert f"user {DOWNSTREAM[0]}\ntopic read citybrain/down/#\ntopic read citybrain/alerts/#" in acl
    proc, ep = start_mosquitto(tmp_path / "mosquitto", password_file=files / "passwd", acl_file=files / "acl")
    gateway = _client(ep.port, *GATEWAY)
    bridge = _client(ep.port, *DOWNSTREAM)
    device = _client(ep.port, a, secret)
    clients = [gateway, bridge, device]
    try:
        assert wait_for(lambda: all(c.connack and c.connack[0] for c in clients), timeout=20)
        for c in (gateway, bridge):
            c.c.subscribe("citybrain/#", qos=1)
        device.c.subscribe(f"citybrain/cmd/{a}", qos=1)
        assert wait_for(lambda: all(c.subacks for c in clients), timeout=10)
        # The bridge may not publish uplinks (spoofing a device) nor commands.
        bridge.c.publish(f"citybrain/up/{a}/telemetry", b"spoof", qos=1).wait_for_publish(10)
        bridge.c.publish(f"citybrain/cmd/{a}", b"spoof", qos=1).wait_for_publish(10)
        # The gateway bridges a reading downstream and sends a command; the device reports.
        gateway.c.publish("citybrain/down/350206/air/" + a, b"reading", qos=1).wait_for_publish(10)
        gateway.c.publish(f"citybrain/cmd/{a}", b"command", qos=1).wait_for_publish(10)
        device.c.publish(f"citybrain/up/{a}/telemetry", b"real", qos=1).wait_for_publish(10)
        assert wait_for(lambda: "citybrain/down/350206/air/" + a in bridge.topics(), timeout=10)
        assert wait_for(lambda: (f"citybrain/up/{a}/telemetry", b"real") in gateway.messages, timeout=10)
        assert wait_for(lambda: (f"citybrain/cmd/{a}", b"command") in device.messages, timeout=10)
        time.sleep(0.3)
        assert b"spoof" not in [p for _, p in gateway.messages + device.messages + bridge.messages]
        # The bridge reads only down/ and alerts/; the gateway does not read its own commands or down/.
        assert all(t.startswith(("citybrain/down/", "citybrain/alerts/")) for t in bridge.topics())
        assert all(t.startswith("citybrain/up/") for t in gateway.topics())
    finally:
        for c in clients:
            c.close()
        proc.stop()
