"""Devices log in to the embedded broker with ledger credentials and stay under their own code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from tests.integration.helpers import MqttRecorder, ledger_broker, open_ledger, wait_for

pytestmark = pytest.mark.e2e

SERVICE = ("svc-gateway", "service-secret-0123")


@pytest.fixture
def broker(database_url: str, tmp_path: Path) -> Iterator[int]:
    with ledger_broker("mqtt (ledger auth)", database_url, SERVICE, tmp_path / "broker.log") as (_, port):
        yield port


@pytest.fixture
async def ledger(database_url: str, models: ModelRegistry) -> AsyncIterator[Ledger]:
    async with open_ledger(database_url, models) as ledger:
        yield ledger


async def test_ledger_credentials_and_topic_acl(broker: int, ledger: Ledger) -> None:
    a = DeviceCode.build("350206", "0308", 1).full
    b = DeviceCode.build("350206", "0308", 2).full
    for code in (a, b):
        await ledger.register(NewDevice(code, "air-station"), actor="test")
    secret = await ledger.rotate_credentials(a, actor="test")  # after the broker started: found on first login

    service = MqttRecorder(broker, *SERVICE)
    device = MqttRecorder(broker, a, secret)
    wrong = MqttRecorder(broker, a, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    anonymous = MqttRecorder(broker, None, None)
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
    client = MqttRecorder(broker, code, secret)
    try:
        assert wait_for(lambda: bool(client.connack), timeout=20)
        assert client.connack[0] is False
    finally:
        client.close()
