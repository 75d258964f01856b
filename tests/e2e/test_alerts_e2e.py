"""Early warnings on the running platform (issue 6, "Done means"): one platform, devices driven over MQTT.

One module-scoped platform (``Platform.start``, as ``citybrain demo`` does) serves every
check; devices are paho clients logging in with their ledger credentials, and results are
read straight from PostgreSQL (the HTTP API needs credentials). Waits poll with generous
bounds; nothing asserts on timing.

The platform runs as the deploy files do at scale: its stream worker with
``CITYBRAIN_WORKER_ROLE=ingest`` (normalise, store, republish) and a second worker with
``alerts`` over the readings topics (rules, detectors, liveness), so every check below
also crosses the split. It runs with ``offline_after_cadences = 1.2`` so that silence is
judged after 72 s for a 60 s air station instead of 5 minutes. The silent devices are
primed when the module starts and checked last, so their wait overlaps the other checks.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from citybrain.harness import free_port, spawn
from citybrain.platform import Platform, demo_device_codes
from core.topics import uplink_topic
from devices.code import DeviceCode
from devices.credentials import hash_secret, mosquitto_hash, new_secret
from tests.e2e.helpers import own_platform
from tests.integration.helpers import paho_client, wait_for

pytestmark = pytest.mark.e2e

AIR = demo_device_codes(6)  # registered by Platform.start, one per district
POLLUTED, FLAPPING, SPIKY, SILENT, STALE, LOST = AIR
MANHOLE = DeviceCode.build("350203", "0101", 901).full
K_CADENCES = 1.2
WAIT_S = 90.0


@dataclass
class Env:
    """The running platform and the credentials of its test devices."""

    platform: Platform
    secrets: dict[str, str]
    keep: list[mqtt.Client]

    @property
    def db(self) -> str:
        url = self.platform.services.database_url
        assert url
        return url

    def device(self, code: str, *, will: bool = False) -> mqtt.Client:
        """A device's own MQTT connection (client id = its code, password = its secret)."""
        ep = self.platform.services.mqtt
        assert ep is not None
        c = paho_client(code)
        c.username_pw_set(code, self.secrets[code])
        if will:
            c.will_set(uplink_topic(code, "status"), json.dumps({"v": 1, "state": "offline"}), qos=1, retain=True)
        c.connect(ep.host, ep.port, keepalive=30)
        c.loop_start()
        return c

    def alerts(self, code: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.db) as conn:
            cur = conn.execute(
                "select rule, state, metric, value, labels, opened_at, message from alerts"
                " where device_code = %s order by opened_at, rule",
                (code,),
            )
            cols = [d.name for d in cur.description or ()]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def evaluated_up_to(self, code: str) -> datetime | None:
        """Event time up to which the alerts worker evaluated ``code`` (``rule_state`` watermark)."""
        with psycopg.connect(self.db) as conn:
            row = conn.execute("select watermark_us from rule_state where device_code = %s", (code,)).fetchone()
        return None if row is None else datetime.fromtimestamp(row[0] / 1e6, UTC)

    def wait_evaluated(self, code: str, at: datetime, timeout: float = WAIT_S) -> None:
        """Wait until the rules and detectors have evaluated ``code``'s readings up to ``at``.

        The watermark is written in the transaction that writes the alerts those readings
        raised, so once it reaches ``at`` every alert up to ``at`` is in the table.
        """

        def done() -> bool:
            upto = self.evaluated_up_to(code)
            return upto is not None and upto >= at

        assert wait_for(done, timeout), f"{code} evaluated up to {self.evaluated_up_to(code)}, not {at}"

    def wait_alerts(self, code: str, rule: str, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        """Wait until ``code`` has an alert of ``rule`` (else fail showing its alerts); return those alerts."""
        assert wait_for(lambda: any(a["rule"] == rule for a in self.alerts(code)), timeout), self.alerts(code)
        return [a for a in self.alerts(code) if a["rule"] == rule]


def _send(client: mqtt.Client, code: str, at: datetime, metrics: dict[str, float]) -> None:
    doc = {"v": 1, "ts": at.isoformat(), "metrics": metrics}
    client.publish(uplink_topic(code), json.dumps(doc), qos=1).wait_for_publish(10)


def _status(client: mqtt.Client, code: str, state: str) -> None:
    client.publish(
        uplink_topic(code, "status"), json.dumps({"v": 1, "state": state}), qos=1, retain=True
    ).wait_for_publish(10)


def _drop(client: mqtt.Client) -> None:
    """Lose the connection without DISCONNECT, so the broker publishes the will."""
    client.loop_stop()
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.close()


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _provision(db: str) -> dict[str, str]:
    """Register the manhole cover and give every test device an MQTT secret."""
    secrets = {code: new_secret() for code in (*AIR, MANHOLE)}
    with psycopg.connect(db) as conn:
        conn.execute(
            "insert into devices (code, alias, model, device_class, name, district, state, created_by, updated_by)"
            " values (%s, %s, 'manhole-cover@1', 'manhole', 'e2e manhole', '350203', 'registered', 'e2e', 'e2e')"
            " on conflict (code) do nothing",
            (MANHOLE, MANHOLE[:16]),
        )
        for code, secret in secrets.items():
            conn.execute(
                "update devices set secret_hash = %s, mosquitto_hash = %s where code = %s",
                (hash_secret(secret), mosquitto_hash(secret), code),
            )
    return secrets


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with own_platform(
        tmp_path_factory, "alerts-platform", devices=len(AIR), offline_after_cadences=K_CADENCES, worker_role="ingest"
    ) as p:
        e = Env(p, {}, [])
        try:
            port = free_port()
            p.processes.append(  # stopped with the platform
                spawn(
                    "alert worker",
                    [sys.executable, "-m", "citybrain.cli", "worker", "--web-port", str(port)],
                    p.log_dir / "alert-worker.log",
                    env={**p.env(), "CITYBRAIN_WORKER_ROLE": "alerts"},
                )
            )
            p.wait_http(f"http://127.0.0.1:{port}/healthz", "alert worker", 90)
            e.secrets = _provision(e.db)
            # Prime the silence checks now; the last test looks at them.
            now = datetime.now(UTC).replace(microsecond=0)
            silent = e.device(SILENT)
            _send(silent, SILENT, now, {"pm25": 21.0})
            _close(silent)  # a clean DISCONNECT: no will, just silence
            stale = e.device(STALE, will=True)
            _status(stale, STALE, "online")
            _send(stale, STALE, now, {"pm25": 22.0})
            e.keep.append(stale)  # stays connected, sends nothing more: stale, not offline
            yield e
        finally:
            for c in e.keep:
                _close(c)


def test_pollution_episode_raises_an_aqi_alert(env: Env) -> None:
    """A simulated PM2.5 episode (rise, 8 minutes over AQI 100, fall) opens air.aqi.polluted."""
    dev = env.device(POLLUTED)
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=15)
        profile = [35.0] * 4 + [50.0, 70.0, 95.0, 120.0, 140.0] + [160.0] * 16 + [110.0, 80.0, 50.0, 35.0]
        for i, pm25 in enumerate(profile):  # one reading every 30 s of event time
            _send(dev, POLLUTED, start + timedelta(seconds=30 * i), {"pm25": pm25, "pm10": pm25 * 1.4})
        sent = time.monotonic()
        aqi = env.wait_alerts(POLLUTED, "air.aqi.polluted")
        print(f"AQI alert {time.monotonic() - sent:.1f} s after the episode was sent")
        assert len(aqi) == 1 and aqi[0]["labels"].get("standard") == "HJ 633-2026"
        # opened once the AQI had held above 100 for 5 minutes of event time
        assert aqi[0]["opened_at"] >= start + timedelta(minutes=5)
    finally:
        _close(dev)


def test_manhole_tilt_raises_an_alert(env: Env) -> None:
    """Tilt over 15° for at least 2 s opens manhole.tilt (a passing wheel, under 2 s, does not)."""
    dev = env.device(MANHOLE)
    try:
        t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
        _send(dev, MANHOLE, t, {"tilt": 1.0, "battery": 90.0})
        _send(dev, MANHOLE, t + timedelta(seconds=10), {"tilt": 25.0})  # a wheel: back within a second
        _send(dev, MANHOLE, t + timedelta(seconds=11), {"tilt": 2.0})
        _send(dev, MANHOLE, t + timedelta(seconds=30), {"tilt": 34.0})  # lifted and left askew
        _send(dev, MANHOLE, t + timedelta(seconds=33), {"tilt": 35.0})
        tilt = env.wait_alerts(MANHOLE, "manhole.tilt")
        assert len(tilt) == 1 and tilt[0]["opened_at"] == t + timedelta(seconds=33)
    finally:
        _close(dev)


def test_flapping_sensor_raises_one_alert_not_fifty(env: Env) -> None:
    """PM2.5 jumping across the 75 µg/m³ limit every 10 s for 8 minutes: one alert, held open."""
    dev = env.device(FLAPPING)
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
        for i in range(50):
            _send(dev, FLAPPING, start + timedelta(seconds=10 * i), {"pm25": 120.0 if i % 2 else 20.0})
        marker = start + timedelta(seconds=500)
        _send(dev, FLAPPING, marker, {"pm25": 21.0})  # a marker: the last one
        env.wait_alerts(FLAPPING, "air.pm25.high")
        # The alerts worker has evaluated everything up to the marker (its alerts are committed
        # with the watermark): count what it raised.
        env.wait_evaluated(FLAPPING, marker)
        raised = [a for a in env.alerts(FLAPPING) if not a["rule"].startswith("device.")]
        assert [a["rule"] for a in raised] == ["air.pm25.high"], raised
    finally:
        _close(dev)


def test_anomaly_detector_raises_an_alert_with_its_evidence(env: Env) -> None:
    """After warm-up a jump the rules do not cover (60 µg/m³, under every limit) is an anomaly."""
    dev = env.device(SPIKY)
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)
        values = [30.0 + (1.5 if i % 3 == 0 else -1.0 if i % 3 == 1 else 0.3) for i in range(45)]
        for i, v in enumerate(values):
            _send(dev, SPIKY, start + timedelta(minutes=1) * i, {"pm25": v})
        spike_at = start + timedelta(minutes=45)
        _send(dev, SPIKY, spike_at, {"pm25": 60.0})

        def anomalies() -> list[dict[str, Any]]:
            return [a for a in env.alerts(SPIKY) if a["rule"].startswith("anomaly.")]

        # Every detector has seen the spike once the watermark is past it (same transaction).
        env.wait_evaluated(SPIKY, spike_at)
        found = anomalies()
        assert found, env.alerts(SPIKY)
        assert {a["rule"] for a in found} <= {"anomaly.ewma", "anomaly.robust_z"}
        for a in found:
            assert a["metric"] == "pm25" and a["value"] == 60.0 and a["opened_at"] == spike_at
            labels = a["labels"]
            assert labels["detector"] == a["rule"].removeprefix("anomaly.")
            assert 28 < float(labels["baseline"]) < 32 and float(labels["score"]) > float(labels["threshold"])
            assert labels["window_end"] == spike_at.isoformat().replace("+00:00", "Z")
            assert labels["window_start"] < labels["window_end"] and labels["detail"] == "up"
        # the warm-up raised nothing: no anomaly before the spike
        assert all(a["opened_at"] == spike_at for a in env.alerts(SPIKY) if not a["rule"].startswith("device."))
    finally:
        _close(dev)


def test_lost_connection_is_offline_at_once(env: Env) -> None:
    """The broker's last will (connection lost) makes the device offline without waiting for silence."""
    dev = env.device(LOST, will=True)
    _status(dev, LOST, "online")
    _send(dev, LOST, datetime.now(UTC).replace(microsecond=0), {"pm25": 18.0})
    assert wait_for(lambda: _session(env.db, LOST) is True, WAIT_S)
    _drop(dev)
    assert wait_for(lambda: _session(env.db, LOST) is False, WAIT_S), "the last will did not reach the store"
    offline = env.wait_alerts(LOST, "device.offline")
    assert len(offline) == 1 and offline[0]["state"] == "open" and "last will" in offline[0]["message"]


def test_silent_sensor_goes_offline_and_a_connected_one_stale(env: Env) -> None:
    """No data for k × cadence: offline without a session, stale (a distinct alert) while connected."""
    env.wait_alerts(SILENT, "device.offline", WAIT_S + 60)
    env.wait_alerts(STALE, "device.stale")
    assert [a["rule"] for a in env.alerts(SILENT)] == ["device.offline"]
    assert [a["rule"] for a in env.alerts(STALE)] == ["device.stale"]  # connected: not offline
    # The silence alert names its evidence like a detector does.
    labels = env.alerts(SILENT)[0]["labels"]
    assert labels["detector"] == "silence" and labels["detail"] == "offline"
    assert float(labels["score"]) > float(labels["threshold"]) == pytest.approx(K_CADENCES)


def _session(db: str, code: str) -> bool | None:
    with psycopg.connect(db) as conn:
        row = conn.execute("select connected from device_sessions where code = %s", (code,)).fetchone()
    return None if row is None else bool(row[0])
