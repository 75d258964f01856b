"""The whole platform, started through the same code path as `citybrain demo`, driven as a device would."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import psutil
import psycopg
import pytest

from citybrain.platform import Platform, demo_device_codes
from core.topics import KafkaTopics, uplink_topic
from tests.e2e.helpers import own_platform
from tests.integration.helpers import consume, mqtt_client, wait_for

pytestmark = pytest.mark.e2e


# The admin API key of the module's platform (Platform.api_key), set by the fixture.
HEADERS: dict[str, str] = {}


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=HEADERS if headers is None else headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    before = _descendants()
    with own_platform(tmp_path_factory, "platform", devices=6) as p:
        HEADERS["X-Api-Key"] = p.api_key("admin")
        yield p
    # No process of the platform remains after it stops.
    assert wait_for(lambda: not (_descendants() - before), timeout=20), _descendants() - before


def test_reading_flows_to_store_api_and_alert_feeds(platform: Platform) -> None:
    mqtt = platform.services.mqtt
    assert mqtt is not None
    code = demo_device_codes(1)[0]
    topics = KafkaTopics(platform.settings.topic_prefix)
    api = f"http://127.0.0.1:{platform.api_port}"
    alerts_seen: list[bytes] = []
    sub = mqtt_client(mqtt.host, mqtt.port)
    sub.on_message = lambda c, u, m: alerts_seen.append(m.payload)
    sub.subscribe(f"citybrain/alerts/{code[:6]}/#", qos=1)
    dev = mqtt_client(mqtt.host, mqtt.port)
    try:
        ts = datetime.now(UTC).replace(microsecond=0)
        payload = json.dumps({"v": 1, "ts": ts.isoformat(), "metrics": {"pm25": 120.5, "pm10": 180}})
        dev.publish(uplink_topic(code), payload, qos=1).wait_for_publish(5)

        def stored() -> bool:
            with psycopg.connect(platform.services.database_url) as conn:
                return conn.execute("select pm25 from readings_air where device_code = %s", (code,)).fetchone() == (
                    120.5,
                )

        assert wait_for(stored, 30), "reading not stored in PostgreSQL"
        assert _get(f"{api}/api/v1/devices/{code}/latest", headers={})[0] == 401  # no principal, no data
        status, body = _get(f"{api}/api/v1/devices/{code}/latest")
        assert status == 200 and body["metrics"]["pm25"]["value"] == 120.5
        assert body["metrics"]["pm25"]["ts"] == ts.isoformat().replace("+00:00", "Z")
        status, body = _get(f"{api}/api/v1/readings?device={code}&metric=pm25")
        assert status == 200 and [i["value"] for i in body["items"]] == [120.5]
        import asyncio

        recs = asyncio.run(consume(platform.services.kafka_bootstrap or "", topics.alerts, 1, timeout=30))
        assert recs, "no alert on the Kafka alerts topic"
        alert = json.loads(recs[0].value)
        assert alert["device"] == code and alert["state"] == "open" and alert["rule"] == "air.pm25.high"
        assert wait_for(lambda: bool(alerts_seen), 20), "no alert on MQTT citybrain/alerts/..."
        assert json.loads(alerts_seen[0])["id"] == alert["id"]
        status, body = _get(f"{api}/api/v1/alerts?state=open")
        assert [a["id"] for a in body["items"]] == [alert["id"]]
        # the device was commissioned by its first valid message
        status, body = _get(f"{api}/api/v1/devices/{code}")
        assert body["state"] == "active"
    finally:
        for c in (sub, dev):
            c.loop_stop()
            c.disconnect()


def test_malformed_payload_is_dead_lettered_while_gateway_keeps_serving(platform: Platform) -> None:
    mqtt = platform.services.mqtt
    assert mqtt is not None
    code = demo_device_codes(2)[1]
    topics = KafkaTopics(platform.settings.topic_prefix)
    dev = mqtt_client(mqtt.host, mqtt.port)
    try:
        dev.publish(uplink_topic(code), b"{this is not json", qos=1).wait_for_publish(5)
        ts = datetime.now(UTC).replace(microsecond=0)
        dev.publish(
            uplink_topic(code), json.dumps({"v": 1, "ts": ts.isoformat(), "metrics": {"pm25": 11}}), qos=1
        ).wait_for_publish(5)
        import asyncio

        dead = asyncio.run(
            consume(
                platform.services.kafka_bootstrap or "",
                topics.deadletter,
                1,
                timeout=30,
                predicate=lambda r: r.value == b"{this is not json",
            )
        )
        assert dead and dict(dead[0].headers)["reason"] == b"bad_json"
        assert wait_for(
            lambda: _get(f"http://127.0.0.1:{platform.api_port}/api/v1/devices/{code}/latest")[0] == 200, 30
        )
        for p in platform.processes:
            assert p.alive(), p.name
    finally:
        dev.loop_stop()
        dev.disconnect()


def test_metrics_and_docs_are_served(platform: Platform) -> None:
    for port in (platform.api_port, platform.gateway_port, platform.worker_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{platform.gateway_port}/metrics", timeout=5) as r:
        assert b"citybrain_gateway_messages_forwarded_total" in r.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{platform.api_port}/docs", timeout=5) as r:
        assert r.status == 200
    _status, spec = _get(f"http://127.0.0.1:{platform.api_port}/openapi.json", headers={})
    assert "/api/v1/alerts" in spec["paths"]
    assert spec["paths"]["/api/v1/alerts"]["get"]["x-citybrain-permission"] == "alerts:read"


def _sse_reader(url: str, events: list[dict], stop: threading.Event) -> None:
    import httpx

    try:
        with (
            httpx.Client(timeout=httpx.Timeout(5.0, read=30.0), headers=HEADERS) as client,
            client.stream("GET", url) as resp,
        ):
            buf = ""
            for chunk in resp.iter_text():
                buf += chunk
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
                    if data:
                        events.append(json.loads("".join(data)))
                if stop.is_set():
                    return
    except httpx.HTTPError:
        if not stop.is_set():
            raise


def _feed_subscribers(api: str) -> float:
    """The API's ``citybrain_alert_feed_subscribers`` gauge: SSE subscriptions registered with the feed."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{api}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "citybrain_alert_feed_subscribers":
            return sum(s.value for s in family.samples)
    return 0.0


def test_live_feed_reaches_every_console_and_ack_updates_all(platform: Platform) -> None:
    mqtt = platform.services.mqtt
    assert mqtt is not None
    code = demo_device_codes(3)[2]
    api = f"http://127.0.0.1:{platform.api_port}"
    feeds: list[list[dict]] = [[], []]
    stop = threading.Event()
    readers = [
        threading.Thread(
            target=_sse_reader, args=(f"{api}/api/v1/alerts/stream?district={code[:6]}", f, stop), daemon=True
        )
        for f in feeds
    ]
    before = _feed_subscribers(api)
    for t in readers:
        t.start()
    # Publish only once the feed has both subscriptions (its gauge counts them once registered).
    assert wait_for(lambda: _feed_subscribers(api) >= before + len(readers), 20), _feed_subscribers(api)
    dev = mqtt_client(mqtt.host, mqtt.port)
    try:
        ts = datetime.now(UTC).replace(microsecond=0)
        dev.publish(
            uplink_topic(code), json.dumps({"v": 1, "ts": ts.isoformat(), "metrics": {"pm25": 99}}), qos=1
        ).wait_for_publish(5)
        assert wait_for(lambda: all(any(e.get("kind") == "open" for e in f) for f in feeds), 30), feeds
        alert_id = next(e["id"] for e in feeds[0] if e.get("kind") == "open")
        req = urllib.request.Request(
            f"{api}/api/v1/alerts/{alert_id}/ack",
            method="POST",
            data=json.dumps({"actor": "duty-officer", "comment": "on it"}).encode(),
            headers={"Content-Type": "application/json", "X-Api-Key": platform.api_key("operator")},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            acked = json.loads(r.read())
            assert acked["state"] == "acknowledged"
        assert wait_for(
            lambda: all(any(e.get("kind") == "ack" and e.get("id") == alert_id for e in f) for f in feeds), 20
        ), feeds
        # The actor is the operator's principal, not the body's free text, in the alert and in the audit log.
        ack_event = next(e for e in feeds[0] if e.get("kind") == "ack" and e.get("id") == alert_id)
        assert str(ack_event.get("actor", "")).startswith("svc-operator-"), ack_event
        status, audit = _get(f"{api}/api/v1/audit?action=alert.*")
        assert status == 200 and [(i["action"], i["resource"]) for i in audit["items"]] == [
            ("alert.ack", f"alert/{alert_id}")
        ]
    finally:
        stop.set()
        dev.loop_stop()
        dev.disconnect()
