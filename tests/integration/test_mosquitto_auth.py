"""Device authentication and topic ACLs on real brokers: Mosquitto (rendered files) and amqtt (ledger plugin).

The same device-side assertions run against both brokers:

* a device logs in with its ledger credential and its uplinks arrive;
* publishing under another device's code is dropped (never delivered);
* a wrong secret and an anonymous client are refused at CONNECT;
* subscribing to another device's command topic yields nothing;
* a device claiming the gateway's client id cannot touch the gateway's session
  (issue 15, defect 1), and retained messages reach only the subscriptions they
  match and may be read by (defect 9, an amqtt bug).

Mosquitto runs as ``deploy/mosquitto`` configures it: devices on a listener that
replaces each client id by the username, the platform's service accounts on a
listener of their own (``services.passwd``). It gets its files from ``citybrain
devices mosquitto-files`` and re-reads them on SIGHUP after the ledger changed; the
service roles (gateway, downstream) are Mosquitto-only (amqtt lets every service
account use every topic).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from paho.mqtt.client import MQTT_ERR_SUCCESS

from citybrain.devices_cli import register
from citybrain.harness import ManagedProcess, MosquittoServices, free_port, reload_mosquitto, start_mosquitto
from citybrain.settings import Settings
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from tests.integration.helpers import MqttRecorder, ledger_broker, open_ledger, wait_for

pytestmark = pytest.mark.integration

GATEWAY = ("cb-gateway", "gateway-secret-0123")
DOWNSTREAM = ("cb-bridge", "bridge-secret-0123")

_HAS_MOSQUITTO = bool(shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin"))


def _client(
    port: int, username: str | None, password: str | None, client_id: str | None = None, *, clean_session: bool = True
) -> MqttRecorder:
    # A refused client would otherwise reconnect every second and flood the log.
    return MqttRecorder(
        port, username, password, reconnect_delay=(5, 10), client_id=client_id, clean_session=clean_session
    )


@dataclass
class Broker:
    """A broker with device authentication, and how to refresh it after a ledger change.

    Devices connect to ``port``, service accounts to ``service_port`` (the same port on amqtt).
    """

    kind: str
    port: int
    service_port: int
    proc: ManagedProcess
    database_url: str
    files: Path | None = None

    def refresh(self) -> None:
        """Make the broker see the ledger as it is now.

        Asynchronous (Mosquitto handles SIGHUP in its loop; the amqtt plugin re-reads changed
        rows every ``--refresh-s``, 1 s here): wait for logins that only the new ledger answers so
        (:func:`_login_until`).
        """
        if self.kind == "mosquitto":
            assert self.files is not None
            assert render_files(self.database_url, self.files) == 0
            reload_mosquitto(self.proc)


def _login_until(port: int, username: str, password: str, *, accepted: bool, timeout: float = 20.0) -> MqttRecorder:
    """Log in until the broker answers ``accepted`` (it does once it has seen the ledger change)."""
    deadline = time.monotonic() + timeout
    while True:
        client = _client(port, username, password)
        answered = wait_for(lambda c=client: bool(c.connack), timeout=max(0.1, deadline - time.monotonic()))
        if answered and client.connack[0] is accepted:
            return client
        client.close()
        verb = "accept" if accepted else "refuse"
        assert time.monotonic() < deadline, f"the broker did not {verb} {username}'s credential within {timeout}s"


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
        services = MosquittoServices(free_port(), files / "services.passwd")
        proc, ep = start_mosquitto(
            tmp_path / "mosquitto", password_file=files / "passwd", acl_file=files / "acl", services=services
        )
        try:
            yield Broker("mosquitto", ep.port, services.port, proc, database_url, files)
        finally:
            proc.stop()
        return
    with ledger_broker("mqtt (amqtt, ledger auth)", database_url, GATEWAY, tmp_path / "amqtt.log") as (proc, port):
        yield Broker("amqtt", port, port, proc, database_url)


def _wrong(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


def test_device_credentials_and_topic_acl(broker: Broker, devices: dict[str, str]) -> None:
    (a, secret), (b, _) = devices.items()
    gateway = _client(broker.service_port, *GATEWAY)
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
    gateway = _client(broker.service_port, *GATEWAY)
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
        # A credential rotated in the ledger works after the refresh, a revoked one is refused
        # (each within the bound; the broker may take them in turn).
        new = _login_until(broker.port, b, secret_b, accepted=True)
        clients.append(new)
        clients.append(_login_until(broker.port, a, old_secret, accepted=False))

        # The session opened before the revocation: Mosquitto closes it on SIGHUP,
        # amqtt keeps it but drops its publishes. Either way nothing arrives.
        sent = connected.c.publish(f"citybrain/up/{a}/telemetry", b"after-revocation", qos=1)
        # The broker is done with that publish once it acknowledged it (routing comes before the
        # PUBACK) or closed the session; only then the marker from another client, which reaches
        # the gateway after anything the broker routed before it.
        assert wait_for(
            lambda: connected.disconnected.is_set() or sent.rc != MQTT_ERR_SUCCESS or sent.is_published(), timeout=20
        )
        new.c.publish(f"citybrain/up/{b}/telemetry", b"marker", qos=1).wait_for_publish(10)
        assert wait_for(lambda: f"citybrain/up/{b}/telemetry" in gateway.topics(), timeout=20)
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
        # No wait needed: the spoofs were acknowledged (so routed, or refused) before the gateway's
        # and the device's messages were sent, and each subscriber gets its messages in order.
        assert b"spoof" not in [p for _, p in gateway.messages + device.messages + bridge.messages]
        # The bridge reads only down/ and alerts/; the gateway does not read its own commands or down/.
        assert all(t.startswith(("citybrain/down/", "citybrain/alerts/")) for t in bridge.topics())
        assert all(t.startswith("citybrain/up/") for t in gateway.topics())
    finally:
        for c in clients:
            c.close()
        proc.stop()


GATEWAY_CLIENT_ID = "citybrain-gateway-1"  # what `citybrain demo` and the supervisor give the gateway


async def _third_device(broker: Broker, ledger: Ledger) -> tuple[str, str]:
    """Register a third device with a credential and let the broker see it."""
    code = DeviceCode.build("350206", "0308", 3).full
    await ledger.register(NewDevice(code, "air-station"), actor="test")
    secret = await ledger.rotate_credentials(code, actor="test")
    broker.refresh()
    return code, secret


async def test_device_cannot_take_over_the_gateway_session(
    broker: Broker, ledger: Ledger, devices: dict[str, str]
) -> None:
    """Issue 15, defect 1: a device claiming the gateway's client id never reaches the gateway's session.

    The gateway holds a persistent session under its well-known id. A device with
    valid credentials connects with that id (persistent, then clean), and a client
    with a wrong secret tries the same; meanwhile a third device sends 20 QoS 1
    messages. The gateway is never pushed off, receives all 20, and finds its
    session on reconnect; the device gets a session of its own (none present), and
    on Mosquitto cannot log in on the service listener at all.
    """
    (a, secret), _ = devices.items()
    sender_code, sender_secret = await _third_device(broker, ledger)
    gateway = _client(broker.service_port, *GATEWAY, GATEWAY_CLIENT_ID, clean_session=False)
    clients = [gateway]
    try:
        gateway.subscribe("citybrain/up/+/+")
        thief = _client(broker.port, a, secret, GATEWAY_CLIENT_ID, clean_session=False)
        clients.append(thief)
        assert wait_for(lambda: bool(thief.connack), timeout=20)
        # The device is let in, but under its own code: no session of the gateway's to resume.
        assert thief.connack[0] is True and thief.session_present[0] is False
        thief.close()  # the next one reuses the device's own client id, which would push this one off
        clean_thief = _client(broker.port, a, secret, GATEWAY_CLIENT_ID)
        wrong = _client(broker.port, a, _wrong(secret), GATEWAY_CLIENT_ID)
        clients += [clean_thief, wrong]
        assert wait_for(lambda: bool(clean_thief.connack) and bool(wrong.connack), timeout=20)
        assert clean_thief.connack[0] is True and wrong.connack[0] is False
        if broker.service_port != broker.port:
            on_services = _client(broker.service_port, a, secret, GATEWAY_CLIENT_ID, clean_session=False)
            clients.append(on_services)
            assert wait_for(lambda: bool(on_services.connack), timeout=20)
            assert on_services.connack[0] is False, "a device must not log in on the service listener"

        sender = _client(broker.port, sender_code, sender_secret)
        clients.append(sender)
        assert sender.connected.wait(20)
        topic = f"citybrain/up/{sender_code}/telemetry"
        sent = [f'{{"v":1,"n":{i}}}'.encode() for i in range(20)]
        for payload in sent:
            sender.c.publish(topic, payload, qos=1).wait_for_publish(10)
        assert wait_for(lambda: sum(t == topic for t in gateway.topics()) >= len(sent), timeout=20), (
            f"the gateway received {sum(t == topic for t in gateway.topics())} of {len(sent)}"
        )
        assert [p for t, p in gateway.messages if t == topic] == sent
        assert gateway.disconnects == 0, "the gateway was pushed off its session"
        assert topic not in thief.topics() + clean_thief.topics()

        # The gateway's persistent session is intact: reconnecting finds it.
        gateway.close()
        again = _client(broker.service_port, *GATEWAY, GATEWAY_CLIENT_ID, clean_session=False)
        clients.append(again)
        assert again.connected.wait(20)
        assert again.session_present == [True], "the gateway lost its session"
    finally:
        for c in clients:
            c.close()


async def test_retained_messages_only_reach_matching_authorised_subscriptions(
    broker: Broker, ledger: Ledger, devices: dict[str, str]
) -> None:
    """Issue 15, defect 9: a device's retained status goes to matching, authorised subscriptions only.

    amqtt sent every new client, at CONNECT, the retained messages matching any other
    client's subscriptions (the gateway's ``citybrain/up/+/+``), unchecked by the ACL.
    """
    (a, secret), _ = devices.items()
    sender_code, sender_secret = await _third_device(broker, ledger)
    status = f"citybrain/up/{sender_code}/status"
    sender = _client(broker.port, sender_code, sender_secret)
    gateway = _client(broker.service_port, *GATEWAY)
    clients = [sender, gateway]
    try:
        assert sender.connected.wait(20)
        sender.c.publish(status, b'{"online":true}', qos=1, retain=True).wait_for_publish(10)
        gateway.subscribe("citybrain/up/+/+")
        # Positive control: a matching, authorised subscription gets the retained status.
        assert wait_for(lambda: (status, b'{"online":true}') in gateway.messages, timeout=20)

        # A service account subscribing elsewhere, and a device subscribing to its own commands.
        probe = _client(broker.service_port, *GATEWAY)
        device = _client(broker.port, a, secret)
        clients += [probe, device]
        probe.subscribe("nothing/here/#", f"citybrain/up/{a}/telemetry")
        device.subscribe(f"citybrain/cmd/{a}")
        # Markers sent after the subscriptions: once they arrive, anything retained would have too.
        device.c.publish(f"citybrain/up/{a}/telemetry", b"marker", qos=1).wait_for_publish(10)
        gateway.c.publish(f"citybrain/cmd/{a}", b"marker", qos=1).wait_for_publish(10)
        assert wait_for(lambda: b"marker" in [p for _, p in probe.messages + device.messages], timeout=20)
        assert wait_for(lambda: (f"citybrain/cmd/{a}", b"marker") in device.messages, timeout=20)
        assert probe.messages == [(f"citybrain/up/{a}/telemetry", b"marker")]
        assert device.messages == [(f"citybrain/cmd/{a}", b"marker")]
    finally:
        for c in clients:
            c.close()


def test_amqtt_service_client_ids_belong_to_their_account(database_url: str, tmp_path: Path) -> None:
    """On the embedded broker a client id held by one account's session is refused to another account.

    (Mosquitto's service listener leaves service accounts their free choice of id: only
    platform accounts can log in there, see docs/security.md.)
    """
    with ledger_broker("mqtt (amqtt, two services)", database_url, GATEWAY, tmp_path / "amqtt.log", DOWNSTREAM) as (
        _,
        port,
    ):
        gateway = _client(port, *GATEWAY, GATEWAY_CLIENT_ID, clean_session=False)
        clients = [gateway]
        try:
            gateway.subscribe("citybrain/up/+/+")
            other = _client(port, *DOWNSTREAM, GATEWAY_CLIENT_ID, clean_session=False)
            clients.append(other)
            assert wait_for(lambda: bool(other.connack), timeout=20)
            assert other.connack[0] is False, "another account took the gateway's client id"
            # The gateway's own account may come back to its session (a restarted gateway).
            gateway.close()
            again = _client(port, *GATEWAY, GATEWAY_CLIENT_ID, clean_session=False)
            clients.append(again)
            assert again.connected.wait(20) and again.session_present == [True]
        finally:
            for c in clients:
                c.close()
