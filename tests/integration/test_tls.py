"""TLS on the device side: MQTT over TLS to a private Mosquitto, and the HTTP API over HTTPS.

A throwaway CA, server and client certificates are made with the ``openssl``
command (the ``cryptography`` package is not a dependency). The gateway itself
connects to Mosquitto's TLS listener (with a device-style password login and
a client certificate) and forwards a device's message to Kafka; clients that
do not trust the CA, or speak plain MQTT to the TLS port, get nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import CollectorRegistry

from citybrain.harness import MosquittoTls, free_port, spawn, start_mosquitto
from core.topics import KafkaTopics, uplink_topic
from devices.credentials import mosquitto_hash, render_acl_file, render_password_file
from ingest.batch import decode_batch
from ingest.gateway import Gateway, GatewayConfig, GatewayMetrics
from ingest.mqtt_tls import MqttTls, MqttTlsError
from tests.integration.helpers import consume, create_topics, wait_for

pytestmark = pytest.mark.integration

_MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
_OPENSSL = shutil.which("openssl")
needs_tools = pytest.mark.skipif(not (_MOSQUITTO and _OPENSSL), reason="needs mosquitto and openssl")

CODE = "35020603080000017"
GATEWAY = ("cb-gateway", "gateway-secret-0123")


@dataclass(frozen=True)
class Pki:
    """PEM files of a throwaway CA and what it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    assert _OPENSSL
    subprocess.run([_OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        f"{name}.crt",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not _OPENSSL:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "test-ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "test-ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(d, "client", "test-ca", "extendedKeyUsage=clientAuth\n")
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return Pki(
        d / "test-ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key", d / "other-ca.crt"
    )


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Mosquitto with a plain and a mutual-TLS listener, passwords and ACLs on both; (plain, tls) ports."""
    if not _MOSQUITTO:
        pytest.skip("mosquitto is not installed")
    device_secret = "device-secret-0123"
    auth = tmp_path / "auth"
    auth.mkdir()
    (auth / "passwd").write_text(
        render_password_file([(GATEWAY[0], mosquitto_hash(GATEWAY[1])), (CODE, mosquitto_hash(device_secret))])
    )
    (auth / "acl").write_text(render_acl_file([GATEWAY[0]]))
    tls = MosquittoTls(free_port(), pki.ca, pki.server_cert, pki.server_key, require_certificate=True)
    proc, ep = start_mosquitto(tmp_path / "mosquitto", password_file=auth / "passwd", acl_file=auth / "acl", tls=tls)
    try:
        yield ep.port, tls.port
    finally:
        proc.stop()


def _client(username: str, password: str) -> tuple[mqtt.Client, list[bool]]:
    connack: list[bool] = []
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"t-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    c.username_pw_set(username, password)
    c.on_connect = lambda _c, _u, _f, rc, _p: connack.append(not rc.is_failure)
    return c, connack


def test_tls_settings_are_checked(pki: Pki) -> None:
    assert MqttTls.from_settings("") is None
    with pytest.raises(MqttTlsError):
        MqttTls.from_settings("", str(pki.client_cert), str(pki.client_key))  # a certificate without a CA
    with pytest.raises(MqttTlsError):
        MqttTls(str(pki.ca), str(pki.client_cert))  # a certificate without its key
    with pytest.raises(MqttTlsError):
        MqttTls(str(pki.ca.with_name("missing.crt")))


@needs_tools
async def test_gateway_forwards_over_tls_and_untrusted_clients_are_refused(
    pki: Pki, tls_broker: tuple[int, int], kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    _, tls_port = tls_broker
    await create_topics(kafka_bootstrap, [topics.raw], 4)
    await create_topics(kafka_bootstrap, [topics.deadletter, topics.alerts])
    mutual = MqttTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    gw = Gateway(
        GatewayConfig(
            "127.0.0.1",
            tls_port,
            kafka_bootstrap,
            topics,
            partitions=4,
            linger_ms=10,
            bridge=False,
            client_id=f"gw-{uuid.uuid4().hex[:6]}",
            mqtt_username=GATEWAY[0],
            mqtt_password=GATEWAY[1],
            mqtt_tls=mutual,
        ),
        GatewayMetrics(CollectorRegistry()),
    )
    await gw.start()
    device, device_ok = _client(CODE, "device-secret-0123")
    try:
        await gw.wait_connected(15)  # returns on the SUBACK: the subscription is in place
        # A device over TLS (the same client settings the gateway uses).
        mutual.apply(device)
        device.connect("127.0.0.1", tls_port, keepalive=30)
        device.loop_start()
        assert await asyncio.to_thread(wait_for, lambda: bool(device_ok), 15) and device_ok[0]
        payload = b'{"v":1,"ts":"2026-11-29T08:00:00+08:00","metrics":{"pm25":12}}'
        device.publish(uplink_topic(CODE), payload, qos=1).wait_for_publish(10)
        records = await consume(kafka_bootstrap, topics.raw, 1, timeout=20)
        msgs = [m for r in records for m in decode_batch(r.value)]
        assert [(m.device_code, m.payload) for m in msgs] == [(CODE, payload)]
    finally:
        device.loop_stop()
        device.disconnect()
        await gw.stop()

    # A client that does not trust the broker's CA fails the handshake.
    untrusting, _ = _client(*GATEWAY)
    MqttTls(str(pki.other_ca), str(pki.client_cert), str(pki.client_key)).apply(untrusting)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.connect("127.0.0.1", tls_port, keepalive=30)


@needs_tools
def test_tls_listener_needs_a_client_certificate_and_tls(pki: Pki, tls_broker: tuple[int, int]) -> None:
    _, tls_port = tls_broker
    # Server-verified TLS, but no client certificate: Mosquitto (require_certificate) ends the handshake.
    c, ok = _client(*GATEWAY)
    MqttTls(str(pki.ca)).apply(c)
    refused = False
    try:
        c.connect("127.0.0.1", tls_port, keepalive=30)
        c.loop_start()
        refused = not wait_for(lambda: bool(ok) and ok[0], timeout=3)
    except (ssl.SSLError, OSError):
        refused = True
    finally:
        c.loop_stop()
    assert refused, "a client without a certificate must not get a session"
    # Plain MQTT to the TLS port: no CONNACK.
    with socket.create_connection(("127.0.0.1", tls_port), timeout=3) as s:
        s.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x0a\x00\x04abcd")
        s.settimeout(3)
        try:
            data = s.recv(4)
        except (TimeoutError, ConnectionResetError):
            data = b""
    assert not data.startswith(b"\x20"), "the TLS listener must not answer plain MQTT"


def test_api_serves_https_with_the_configured_certificate(
    pki: Pki, database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update(
        CITYBRAIN_DATABASE_URL=database_url,
        CITYBRAIN_KAFKA_BOOTSTRAP=kafka_bootstrap,  # `citybrain api` serves the NB-IoT push into Kafka
        CITYBRAIN_API_TLS_CERT=str(pki.server_cert),
        CITYBRAIN_API_TLS_KEY=str(pki.server_key),
        PYTHONUNBUFFERED="1",
    )
    proc = spawn(
        "api (https)",
        [sys.executable, "-m", "citybrain.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path / "api.log",
        env=env,
    )
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    url = f"https://127.0.0.1:{port}/healthz"
    status: list[int] = []

    def probe() -> bool:
        if not proc.alive():
            return True
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                status.append(r.status)
                return True
        except OSError:
            return False

    try:
        assert wait_for(probe, timeout=60), proc.log_tail()
        assert proc.alive(), proc.log_tail()
        assert status == [200]
        # Plain HTTP on the same port is not served.
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
        # A client that does not trust the CA refuses the server.
        with pytest.raises(urllib.error.URLError) as info:
            urllib.request.urlopen(url, context=ssl.create_default_context(cafile=str(pki.other_ca)), timeout=2)
        assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    finally:
        proc.stop()


def test_api_refuses_half_a_tls_setting(tmp_path: Path, pki: Pki) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "citybrain.cli", "api", "--port", "0"],
        env={
            **os.environ,
            "CITYBRAIN_DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
            "CITYBRAIN_API_TLS_CERT": str(pki.server_cert),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode != 0 and "CITYBRAIN_API_TLS_KEY" in res.stderr
