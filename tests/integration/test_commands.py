"""Downlink command lifecycle over the embedded MQTT broker with simulated devices."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.harness import MqttEndpoint
from citybrain.routes import commands as command_routes
from citybrain.routes.context import ApiContext
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.commands import CommandDispatcher, CommandMetrics, CommandStore, MqttCommandTransport
from tests.integration.helpers import await_for, mqtt_client

pytestmark = pytest.mark.integration

ACKING = DeviceCode.build("350203", "0101", 11).full
SILENT = DeviceCode.build("350203", "0101", 12).full
OFFLINE = DeviceCode.build("350203", "0101", 13).full


@pytest.fixture
async def setup(database_url: str, models: ModelRegistry, mqtt_endpoint: MqttEndpoint) -> AsyncIterator[Any]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    ledger = Ledger(pool, models)
    for code in (ACKING, SILENT, OFFLINE):
        await ledger.register(NewDevice(code=code, model="manhole-cover"))
    reg = CollectorRegistry()
    app = FastAPI()
    app.include_router(command_routes.build(ApiContext(pool, models, reg)))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    transport = MqttCommandTransport(mqtt_endpoint.host, mqtt_endpoint.port, client_id=f"cmd-{uuid.uuid4().hex[:6]}")
    dispatcher = CommandDispatcher(CommandStore(pool), {"mqtt": transport}, CommandMetrics(reg), poll_s=0.2)
    await transport.start()
    await dispatcher.start()
    try:
        yield client, reg
    finally:
        await dispatcher.stop()
        await transport.stop()
        await client.aclose()
        # retained statuses would leak into other tests
        cleaner = mqtt_client(mqtt_endpoint.host, mqtt_endpoint.port)
        for code in (ACKING, SILENT):
            cleaner.publish(f"citybrain/up/{code}/status", b"", qos=1, retain=True).wait_for_publish(5)
        cleaner.loop_stop()
        cleaner.disconnect()
        await pool.close()


def simulated_device(endpoint: MqttEndpoint, code: str, *, answer: bool) -> tuple[mqtt.Client, list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        got.append(doc)
        if answer:
            client.publish(f"citybrain/up/{code}/event", json.dumps({"v": 1, "ack": doc["id"], "ok": True}), qos=1)

    dev = mqtt_client(endpoint.host, endpoint.port, client_id=f"dev-{code}")
    dev.on_message = on_message
    dev.subscribe(f"citybrain/cmd/{code}", qos=1)
    return dev, got


async def state_of(client: httpx.AsyncClient, command_id: str) -> str:
    r = await client.get(f"/api/v1/commands/{command_id}")
    return str(r.json()["state"])


async def test_lifecycle_acked_failed_expired_and_validation(setup: Any, mqtt_endpoint: MqttEndpoint) -> None:
    client, reg = setup
    bad = await client.post(f"/api/v1/devices/{ACKING}/commands", json={"name": "reboot"})
    assert bad.status_code == 422 and bad.json()["reason"] == "unknown_command"
    low = await client.post(
        f"/api/v1/devices/{ACKING}/commands", json={"name": "set_interval", "params": {"seconds": 1}}
    )
    assert low.status_code == 422 and low.json()["reason"] == "below_min"

    # queued before the device is online: it waits
    r = await client.post(
        f"/api/v1/devices/{ACKING}/commands", json={"name": "set_interval", "params": {"seconds": 600}}
    )
    assert r.status_code == 201 and r.json()["state"] == "queued"
    acked_id = r.json()["id"]
    dev, got = simulated_device(mqtt_endpoint, ACKING, answer=True)
    silent, _ = simulated_device(mqtt_endpoint, SILENT, answer=False)
    try:
        assert await state_of(client, acked_id) == "queued"
        for code, d in ((ACKING, dev), (SILENT, silent)):
            d.publish(f"citybrain/up/{code}/status", json.dumps({"v": 1, "state": "online"}), qos=1, retain=True)

        silent_id = (
            await client.post(
                f"/api/v1/devices/{SILENT}/commands",
                json={"name": "set_interval", "params": {"seconds": 900}, "timeout_s": 1},
            )
        ).json()["id"]
        offline_id = (
            await client.post(
                f"/api/v1/devices/{OFFLINE}/commands",
                json={"name": "set_interval", "params": {"seconds": 900}, "ttl_s": 1},
            )
        ).json()["id"]

        assert await await_for(lambda: _is(client, acked_id, "acked"), timeout=15)
        assert await await_for(lambda: _is(client, silent_id, "failed"), timeout=15)
        assert await await_for(lambda: _is(client, offline_id, "expired"), timeout=15)
    finally:
        for d in (dev, silent):
            d.loop_stop()
            d.disconnect()

    assert got == [{"v": 1, "id": acked_id, "name": "set_interval", "params": {"seconds": 600}}]
    row = (await client.get(f"/api/v1/commands/{acked_id}")).json()
    assert [h["state"] for h in row["history"]] == ["queued", "sent", "acked"]
    assert row["result"] == {"ok": True} and row["sent_at"] and row["acked_at"]
    failed = (await client.get(f"/api/v1/commands/{silent_id}")).json()
    assert failed["result"] == {"error": "timeout"}
    listing = (await client.get(f"/api/v1/devices/{ACKING}/commands")).json()
    assert [c["id"] for c in listing] == [acked_id]
    assert reg.get_sample_value("citybrain_commands_transitions_total", {"state": "expired"}) == 1


async def _is(client: httpx.AsyncClient, command_id: str, state: str) -> bool:
    return await state_of(client, command_id) == state
