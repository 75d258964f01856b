"""Downlink command lifecycle over the embedded MQTT broker with simulated devices."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
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
from citybrain.security.audit import AuditLog
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.commands import CommandDispatcher, CommandMetrics, CommandStore, MqttCommandTransport
from tests.integration.helpers import MqttRecorder, api_key, await_for, mqtt_client, secure

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
    secure(app, pool)
    headers = await api_key(pool, "operator", districts=("350203",), name="duty-op")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers)
    transport = MqttCommandTransport(mqtt_endpoint.host, mqtt_endpoint.port, client_id=f"cmd-{uuid.uuid4().hex[:6]}")
    dispatcher = CommandDispatcher(CommandStore(pool), {"mqtt": transport}, CommandMetrics(reg), poll_s=0.2)
    await transport.start()
    await dispatcher.start()
    try:
        yield client, reg, pool
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
        if msg.topic != f"citybrain/cmd/{code}":
            # amqtt was seen delivering retained statuses of this code to this client (after
            # another module's fleet had run); a device acts on its command topic only.
            return
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
    client, reg, pool = setup
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
    # Every command sent is audited with the operator as actor (refused ones are not commands).
    sent = await AuditLog(pool).query(action="command.send")
    assert sorted((e.actor, e.resource, e.details["command"]) for e in sent) == sorted(
        ("duty-op", f"device/{code}", cid)
        for code, cid in ((ACKING, acked_id), (SILENT, silent_id), (OFFLINE, offline_id))
    )


async def _is(client: httpx.AsyncClient, command_id: str, state: str) -> bool:
    return await state_of(client, command_id) == state


# --- resend over MQTT: reconnect, timeout, bounded attempts, device-side dedup ------------------
# (Own fixture and imports below, without the HTTP API: commands are created through the store.)


@pytest.fixture
async def resend_setup(database_url: str, models: ModelRegistry, mqtt_endpoint: MqttEndpoint) -> AsyncIterator[Any]:
    from simulators.city import build_sites

    # Own sequence range: retained statuses of other tests' codes must not leak in.
    sites = build_sites({"smart-pole": 2}, seed=31, sequence_base=630_000)
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    ledger = Ledger(pool, models)
    for site in sites:
        await ledger.register(NewDevice(code=site.code, model="smart-pole"))
    silent = DeviceCode.build("350203", "0701", 630_900).full
    await ledger.register(NewDevice(code=silent, model="smart-pole"))
    reg = CollectorRegistry()
    transport = MqttCommandTransport(mqtt_endpoint.host, mqtt_endpoint.port, client_id=f"cmd-{uuid.uuid4().hex[:6]}")
    store = CommandStore(pool)
    dispatcher = CommandDispatcher(store, {"mqtt": transport}, CommandMetrics(reg), poll_s=0.2, max_attempts=3)
    await transport.start()
    await dispatcher.start()
    try:
        yield sites, silent, store, dispatcher, transport, reg
    finally:
        await dispatcher.stop()
        await transport.stop()
        cleaner = mqtt_client(mqtt_endpoint.host, mqtt_endpoint.port)
        for code in [s.code for s in sites] + [silent]:
            cleaner.publish(f"citybrain/up/{code}/status", b"", qos=1, retain=True).wait_for_publish(5)
        cleaner.loop_stop()
        cleaner.disconnect()
        await pool.close()


async def _lamp(store: CommandStore, models: ModelRegistry, code: str, *, timeout_s: int = 30) -> str:
    from ingest.commands import NewCommand, validate_params

    spec = models.get("smart-pole").commands["lamp"]
    params = validate_params(spec, "lamp", {"state": "on", "dimming": 40})
    row = await store.create(NewCommand(code, "lamp", params, ttl_s=120, timeout_s=timeout_s))
    return str(row["id"])


def _pole_fleet(endpoint: MqttEndpoint, sites: list[Any]) -> Any:
    from datetime import UTC, datetime

    from simulators.city import make_model
    from simulators.fleet import Fleet, FleetConfig, SimDevice

    cfg = FleetConfig(
        endpoint.host,
        endpoint.port,
        start=datetime(2026, 11, 29, 4, 0, tzinfo=UTC),
        username=endpoint.username,
        password=endpoint.password,
        connections=1,
        speed=60.0,
        seed=31,
    )
    return Fleet([SimDevice(make_model(s, i)) for i, s in enumerate(sites)], cfg)


async def _state(store: CommandStore, command_id: str) -> str:
    row = await store.get(command_id)
    assert row is not None
    return str(row["state"])


async def test_offline_device_gets_its_command_once_it_comes_online_and_a_missed_one_is_resent(
    resend_setup: Any, models: ModelRegistry, mqtt_endpoint: MqttEndpoint
) -> None:
    import asyncio
    import threading

    sites, _, store, dispatcher, _, reg = resend_setup
    never_seen, stale = sites[0].code, sites[1].code
    # A stale retained "online" (the broker lost the device's will): the first send goes nowhere.
    ghost = mqtt_client(mqtt_endpoint.host, mqtt_endpoint.port)
    ghost.publish(f"citybrain/up/{stale}/status", json.dumps({"v": 1, "state": "online"}), qos=1, retain=True)
    ghost.loop_stop()
    ghost.disconnect()
    queued_id = await _lamp(store, models, never_seen)
    missed_id = await _lamp(store, models, stale)
    # The pass that sent the missed command read both; another pass, run here to its end
    # (no waiting on the loop's timing), must leave the offline device's command queued too.
    assert await await_for(lambda: _is_state(store, missed_id, "sent"), timeout=10)
    await dispatcher.run_once()
    assert await _state(store, queued_id) == "queued"  # offline: it waits

    fleet = _pole_fleet(mqtt_endpoint, sites)
    stop = threading.Event()
    runner = threading.Thread(target=fleet.run, args=(3600, stop))
    runner.start()
    try:
        # Both poles come online with a live birth: the queued command is sent, the missed one re-sent.
        assert await await_for(lambda: _is_state(store, queued_id, "acked"), timeout=20)
        assert await await_for(lambda: _is_state(store, missed_id, "acked"), timeout=20)
    finally:
        stop.set()
        await asyncio.to_thread(runner.join, 30)
    assert not runner.is_alive()

    first = await store.get(queued_id)
    assert first is not None and first["attempts"] == 1
    assert [h["state"] for h in first["history"]] == ["queued", "sent", "acked"]
    missed = await store.get(missed_id)
    assert missed is not None and missed["attempts"] == 2 and missed["result"] == {"ok": True}
    assert [h["state"] for h in missed["history"]] == ["queued", "sent", "queued", "sent", "acked"]
    assert missed["history"][2]["detail"] == "device reconnected; sending again"
    assert missed["last_sent_at"] > missed["sent_at"]
    # each pole executed its command once
    assert fleet.stats.commands == 2 and fleet.stats.duplicate_commands == 0
    assert reg.get_sample_value("citybrain_commands_resends_total", {"reason": "reconnect"}) == 1


async def test_lost_answer_is_resent_after_timeout_and_executed_once(
    resend_setup: Any, models: ModelRegistry, mqtt_endpoint: MqttEndpoint
) -> None:
    import asyncio
    import threading

    sites, _, store, dispatcher, transport, reg = resend_setup
    pole = sites[0].code
    lost: list[str] = []

    async def lossy_ack(command_id: str, ok: bool, result: dict[str, Any], code: str | None) -> None:
        if not lost:
            lost.append(command_id)  # the first answer is lost on the way
            return
        await dispatcher.on_ack(command_id, ok, result, code)

    transport.bind(lossy_ack, dispatcher.on_online)
    fleet = _pole_fleet(mqtt_endpoint, sites[:1])
    stop = threading.Event()
    runner = threading.Thread(target=fleet.run, args=(3600, stop))
    runner.start()
    try:
        assert await await_for(lambda: transport.online(pole), timeout=10)
        command_id = await _lamp(store, models, pole, timeout_s=1)
        dispatcher.wake()
        assert await await_for(lambda: _is_state(store, command_id, "acked"), timeout=20)
    finally:
        stop.set()
        await asyncio.to_thread(runner.join, 30)
    assert lost == [command_id]
    row = await store.get(command_id)
    assert row is not None and row["attempts"] == 2
    assert [h["state"] for h in row["history"]] == ["queued", "sent", "queued", "sent", "acked"]
    # the device got the command twice, executed it once and answered both
    assert fleet.stats.commands == 1 and fleet.stats.duplicate_commands == 1 and fleet.stats.acks_sent == 2
    assert reg.get_sample_value("citybrain_commands_resends_total", {"reason": "timeout"}) == 1


async def test_unanswered_command_fails_after_max_attempts(
    resend_setup: Any, models: ModelRegistry, mqtt_endpoint: MqttEndpoint
) -> None:
    _, silent, store, _, _, _ = resend_setup
    dev, got = simulated_device(mqtt_endpoint, silent, answer=False)
    try:
        dev.publish(f"citybrain/up/{silent}/status", json.dumps({"v": 1, "state": "online"}), qos=1, retain=True)
        command_id = await _lamp(store, models, silent, timeout_s=1)
        assert await await_for(lambda: _is_state(store, command_id, "failed"), timeout=20)
    finally:
        dev.loop_stop()
        dev.disconnect()
    row = await store.get(command_id)
    assert row is not None and row["attempts"] == 3 and row["result"] == {"error": "timeout"}
    assert [h["state"] for h in row["history"]] == ["queued", "sent", "queued", "sent", "queued", "sent", "failed"]
    assert [d["id"] for d in got] == [command_id] * 3  # the same id every time: devices can deduplicate


async def _is_state(store: CommandStore, command_id: str, state: str) -> bool:
    return await _state(store, command_id) == state


class _HourBehind(datetime):
    """The dispatcher host's wall clock, an hour behind the database's."""

    @classmethod
    def now(cls, tz: Any = None) -> _HourBehind:  # type: ignore[override]
        return super().now(tz) - timedelta(hours=1)


async def test_a_dispatcher_host_clock_behind_the_databases_still_resends_on_reconnect(
    resend_setup: Any, models: ModelRegistry, mqtt_endpoint: MqttEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Send times are the database's clock; the dispatcher must not compare them with its own."""
    import ingest.commands

    monkeypatch.setattr(ingest.commands, "datetime", _HourBehind)
    _, silent, store, _, _, reg = resend_setup
    # A stale retained "online": the first send reaches nobody.
    ghost = mqtt_client(mqtt_endpoint.host, mqtt_endpoint.port)
    ghost.publish(f"citybrain/up/{silent}/status", json.dumps({"v": 1, "state": "online"}), qos=1, retain=True)
    ghost.loop_stop()
    ghost.disconnect()
    # A listener that is not the device sees the first send pass the broker; only then does the
    # device connect. ("sent" is recorded when the transport takes the message, which it may flush
    # later: a device subscribed by then got attempt 1 and acked it, seen once in CI.)
    first = MqttRecorder.at(mqtt_endpoint)
    try:
        assert await asyncio.to_thread(first.connected.wait, 10)
        first.c.subscribe(f"citybrain/cmd/{silent}", qos=1)
        assert await asyncio.to_thread(first.subscribed.wait, 10)
        command_id = await _lamp(store, models, silent, timeout_s=120)  # no timeout resend within the test
        assert await await_for(lambda: _is_state(store, command_id, "sent"), timeout=10)
        assert await await_for(lambda: bool(first.messages), timeout=10)
    finally:
        first.c.loop_stop()
        first.c.disconnect()
    # The device connects and announces itself with a live birth: the command is sent again.
    dev, got = simulated_device(mqtt_endpoint, silent, answer=True)
    try:
        dev.publish(f"citybrain/up/{silent}/status", json.dumps({"v": 1, "state": "online"}), qos=1, retain=True)
        assert await await_for(lambda: _is_state(store, command_id, "acked"), timeout=20)
    finally:
        dev.loop_stop()
        dev.disconnect()
    row = await store.get(command_id)
    assert row is not None and row["attempts"] == 2
    assert [h["state"] for h in row["history"]] == ["queued", "sent", "queued", "sent", "acked"]
    assert [d["id"] for d in got] == [command_id]
    assert reg.get_sample_value("citybrain_commands_resends_total", {"reason": "reconnect"}) == 1
