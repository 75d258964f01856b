"""A small simulated fleet through the embedded MQTT broker, and HJ 212 stations over TCP."""

from __future__ import annotations

import json
import socketserver
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from citybrain.harness import MqttEndpoint
from core.topics import command_topic
from ingest.adapters.hj212.codec import FrameDecoder, parse_segment, reply_9014
from ingest.adapters.json.codec import decode as json_decode
from ingest.adapters.manhole.codec import decode as manhole_decode
from simulators.city import build_sites, make_model
from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.fleet import Fleet, FleetConfig, SimDevice, sent_rows
from tests.integration.helpers import MqttRecorder, wait_for

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)  # 18:00 local: poles switch on during the run


class Collector(MqttRecorder):
    """Subscribes to every uplink of the given devices and keeps what arrives."""

    def __init__(self, ep: MqttEndpoint) -> None:
        super().__init__(ep.port, ep.username, ep.password, ep.host)

    def subscribe_uplinks(self, codes: list[str]) -> None:
        self.subscribe(*(f"citybrain/up/{c}/+" for c in codes))

    def of(self, kind: str) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p in self.messages if t.endswith("/" + kind)]


def test_fleet_publishes_every_record_and_the_subscriber_decodes_them(
    mqtt_endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    sites = build_sites({"air-station": 3, "noise-monitor": 2, "manhole-cover": 2, "smart-pole": 2}, seed=5)
    devices = [SimDevice(make_model(s, i)) for i, s in enumerate(sites)]
    codes = [d.code for d in devices]
    collector = Collector(mqtt_endpoint)
    collector.subscribe_uplinks(codes)
    log = tmp_path / "sent.ndjson"
    cfg = FleetConfig(
        mqtt_endpoint.host,
        mqtt_endpoint.port,
        start=START,
        username=mqtt_endpoint.username,
        password=mqtt_endpoint.password,
        connections=2,
        speed=None,
        interval_s=300,
        sent_log=log,
        # Binary frames over MQTT: this test checks the broker path, not the platform's decoders.
        manhole_binary=True,
        seed=1,
    )
    plan = FaultPlan((Fault(FaultKind.DUPLICATE, devices=(codes[0],)),), seed=1)
    try:
        stats = Fleet(devices, cfg, plan).run(3600)
        assert stats.records > 0 and stats.acked == stats.published
        want = stats.messages
        assert wait_for(lambda: len(collector.of("telemetry")) + len(collector.of("event")) >= want)
        # Offline statuses are published as each connection closes; they may trail the data.
        assert wait_for(lambda: sum(b'"offline"' in p for _, p in collector.of("status")) >= len(codes))
    finally:
        collector.close()
    data = collector.of("telemetry") + collector.of("event")
    assert len(data) == want
    manholes = {d.code for d in devices if d.protocol == "manhole"}
    for topic, payload in data:
        code = topic.split("/")[2]
        if code in manholes:
            assert manhole_decode(payload).imei
        else:
            assert json_decode(payload, device_code=code, received_at=START)
    statuses = [json.loads(p)["state"] for _, p in collector.of("status")]
    assert statuses.count("online") == len(codes) and statuses.count("offline") == len(codes)
    assert manholes
    rows = list(sent_rows(log))
    assert {r[0] for r in rows} == set(codes)
    assert any("duplicate" in r[4] for r in rows if r[0] == codes[0])


def test_poles_answer_commands_and_offline_devices_leave_a_last_will(mqtt_endpoint: MqttEndpoint) -> None:
    # Own sequence range: codes of another test's fleet (and their retained status) must not leak in.
    sites = build_sites({"smart-pole": 1, "air-station": 1}, seed=8, sequence_base=610_000)
    devices = [SimDevice(make_model(s, i)) for i, s in enumerate(sites)]
    pole = next(d for d in devices if d.site.model_id == "smart-pole")
    air = next(d for d in devices if d.site.model_id == "air-station")
    collector = Collector(mqtt_endpoint)
    collector.subscribe_uplinks([pole.code, air.code])
    cfg = FleetConfig(
        mqtt_endpoint.host,
        mqtt_endpoint.port,
        start=START,
        username=mqtt_endpoint.username,
        password=mqtt_endpoint.password,
        connections=1,
        speed=600.0,  # ten simulated minutes per wall second
        interval_s=60,
        seed=2,
    )
    plan = FaultPlan((Fault(FaultKind.OFFLINE, devices=(air.code,), start_s=600),), seed=2)
    fleet = Fleet(devices, cfg, plan)
    stop = threading.Event()
    runner = threading.Thread(target=fleet.run, args=(6 * 3600, stop))
    runner.start()
    try:
        # The birth comes after the pole's command subscription on the same connection.
        assert wait_for(
            lambda: any(pole.code in t and json.loads(p)["state"] == "online" for t, p in collector.of("status"))
        )
        commander = Collector(mqtt_endpoint)
        command = {"v": 1, "id": "cmd-1", "name": "lamp", "params": {"state": "on", "dimming": 40}}
        commander.c.publish(command_topic(pole.code), json.dumps(command), qos=1).wait_for_publish(10)
        acks = lambda: [json.loads(p) for t, p in collector.of("event") if pole.code in t]  # noqa: E731
        assert wait_for(lambda: any(a.get("ack") == "cmd-1" for a in acks()))
        assert next(a for a in acks() if a.get("ack") == "cmd-1") == {"v": 1, "ack": "cmd-1", "ok": True}
        commander.close()
        will = lambda: [json.loads(p)["state"] for t, p in collector.of("status") if air.code in t]  # noqa: E731
        assert wait_for(lambda: "offline" in will())
    finally:
        stop.set()
        runner.join(30)
        collector.close()
    assert not runner.is_alive()
    assert fleet.stats.commands == 1 and fleet.stats.acks_sent == 1
    telemetry = [json.loads(p) for t, p in collector.of("telemetry") if pole.code in t]
    assert any(m["metrics"].get("dimming") == 40 for m in telemetry)


class _Hj212Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        framer = FrameDecoder()
        while data := self.request.recv(4096):
            for item in framer.feed(data):
                if isinstance(item, bytes):
                    packet = parse_segment(item)
                    self.server.packets.append(packet)  # type: ignore[attr-defined]
                    self.request.sendall(reply_9014(packet))


def test_water_stations_send_hour_data_over_hj212_tcp_and_read_9014(mqtt_endpoint: MqttEndpoint) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Hj212Handler)
    server.daemon_threads = True
    server.packets = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sites = build_sites({"water-station": 2}, seed=3, sequence_base=620_000)
        devices = [SimDevice(make_model(s, i)) for i, s in enumerate(sites)]
        cfg = FleetConfig(
            mqtt_endpoint.host,
            mqtt_endpoint.port,
            start=START,
            username=mqtt_endpoint.username,
            password=mqtt_endpoint.password,
            connections=1,
            speed=None,
            hj212=("127.0.0.1", server.server_address[1]),
            seed=3,
        )
        stats = Fleet(devices, cfg).run(4 * 3600)
    finally:
        server.shutdown()
        server.server_close()
    assert stats.hj212_frames == 8 and stats.messages == 0
    assert stats.hj212_replies["9014"] == 8
    packets = server.packets  # type: ignore[attr-defined]
    assert {p.cn for p in packets} == {"2061"} and {p.st for p in packets} == {"21"}
    assert {p.mn for p in packets} == {d.code for d in devices}
