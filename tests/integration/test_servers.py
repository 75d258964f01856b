"""The harness's servers are real and answer their protocols."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from citybrain.harness import (
    PG_PASSWORD_FILE,
    HarnessError,
    ManagedProcess,
    MqttEndpoint,
    Services,
    free_port,
    parse_mqtt_url,
    pg_base_dir,
    pg_password,
    spawn,
    start_postgres,
)
from tests.integration.helpers import MqttRecorder, consume, create_topics, mqtt_client, port_open, wait_for

pytestmark = pytest.mark.integration


async def test_kafka_produce_consume(kafka_bootstrap: str) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, [topic], 2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(20):
            await producer.send_and_wait(topic, str(i).encode(), key=b"k", partition=i % 2)
    finally:
        await producer.stop()
    got = await consume(kafka_bootstrap, topic, 20)
    assert sorted(int(r.value) for r in got) == list(range(20))


def _pubsub(host: str, port: int) -> None:
    topic = f"citybrain/test/{uuid.uuid4().hex[:8]}"
    sub = MqttRecorder(port, host=host)
    pub = mqtt_client(host, port)
    try:
        sub.subscribe(topic)  # waits for the SUBACK: from then on the broker routes the topic to it
        pub.publish(topic, b"hello", qos=1).wait_for_publish(5)
        assert wait_for(lambda: (topic, b"hello") in sub.messages, timeout=5)
    finally:
        sub.close()
        pub.loop_stop()
        pub.disconnect()


def test_embedded_mqtt_pub_sub(mqtt_endpoint: MqttEndpoint) -> None:
    assert mqtt_endpoint.host == "127.0.0.1"
    _pubsub(mqtt_endpoint.host, mqtt_endpoint.port)


def test_mosquitto_pub_sub_when_present() -> None:
    # The machine's Mosquitto on 1883 is optional for `make test`; CI machines have it.
    if not port_open(1883):
        if os.environ.get("CI"):
            pytest.fail("CI machines run Mosquitto on 127.0.0.1:1883, but it is not answering")
        pytest.xfail("no Mosquitto on 127.0.0.1:1883 on this machine")
    _pubsub("127.0.0.1", 1883)


def test_postgres_answers(services) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(services.database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        version = conn.execute("show server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 150000


def _refused_without_the_password(port: int, pgdata: Path) -> None:
    """Neither TCP nor the Unix socket lets the superuser in without its password, or with a wrong one."""
    for host in ("127.0.0.1", str(pgdata)):
        for password in (None, "not-the-password"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(
                    host=host,
                    port=port,
                    user="postgres",
                    dbname="postgres",
                    password=password,
                    passfile=os.devnull,
                    connect_timeout=5,
                ).close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_postgres_wants_its_generated_password() -> None:
    """Issue 15, defect 11: no local user is a trusted superuser; the harness's URL carries the password."""
    name = f"it-{uuid.uuid4().hex[:6]}"
    pgdata = pg_base_dir() / name
    proc, url = start_postgres(name, fresh=True)
    try:
        password = pg_password(pgdata)
        assert password and len(password) >= 24 and urlsplit(url).password == password
        assert _mode(pgdata / PG_PASSWORD_FILE) == 0o600 and _mode(pgdata) == 0o700
        assert _mode(pg_base_dir() / f"{name}.log") == 0o600
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'postgres'"
            ).fetchone() == (True,)
        port = urlsplit(url).port
        assert port is not None
        _refused_without_the_password(port, pgdata)

        # A cluster an older harness made (trust for everyone, no password file) is secured on its next start.
        proc.stop()
        (pgdata / PG_PASSWORD_FILE).unlink()
        (pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        proc, url = start_postgres(name, port=port)
        renewed = pg_password(pgdata)
        assert renewed and renewed != password and urlsplit(url).password == renewed
        with psycopg.connect(url) as conn:
            conn.execute("select 1")
        _refused_without_the_password(port, pgdata)
    finally:
        proc.stop()
        shutil.rmtree(pgdata, ignore_errors=True)
        (pg_base_dir() / f"{name}.log").unlink(missing_ok=True)


async def test_server_data_is_private_to_its_user(services: Services, kafka_bootstrap: str) -> None:
    """Issue 15, defect 11: what the embedded servers write is owner-only (dirs 0700, files 0600)."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"private")
    finally:
        await producer.stop()
    checked = []
    for sub in ("kafka", "mqtt"):
        root = services.data_dir / sub
        if not root.exists():  # a server given by URL (CITYBRAIN_KAFKA_BOOTSTRAP / _MQTT_URL)
            continue
        for path in [root, *root.rglob("*")]:
            if path.is_symlink() or path.is_socket():
                continue
            checked.append(path)
            assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"
    assert _mode(services.data_dir) == 0o700
    assert checked or os.environ.get("CITYBRAIN_KAFKA_BOOTSTRAP")


def test_free_ports_are_not_the_well_known_ones() -> None:
    ports = {free_port() for _ in range(20)}
    assert not ports & {1883, 5432, 9092}


def test_mqtt_url_parsing() -> None:
    ep = parse_mqtt_url("mqtt://u:p@broker.example:8883")
    assert (ep.host, ep.port, ep.username, ep.password) == ("broker.example", 8883, "u", "p")
    with pytest.raises(HarnessError):
        parse_mqtt_url("http://x")


def test_second_embedded_postgres_starts_and_stops_cleanly() -> None:
    proc, url = start_postgres(f"it-{uuid.uuid4().hex[:6]}", fresh=True)
    try:
        with psycopg.connect(url) as conn:
            conn.execute("create table t (x int)")
    finally:
        proc.stop()
    assert not proc.alive()


def test_no_orphans_when_the_harness_process_is_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import time

    import psutil

    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from citybrain.harness import Services\n"
        "s = Services(Path(sys.argv[1]), pg_name=sys.argv[2]); s.start()\n"
        "print('up', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    marker = f"orphan-{uuid.uuid4().hex[:6]}"
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / marker), marker],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "up" in res.stdout, res.stderr

    def leftovers() -> list[str]:
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if marker in cmd:
                out.append(cmd)
        return out

    deadline = time.monotonic() + 15
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers() == []


def test_a_child_respawned_from_a_thread_outlives_that_thread(tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG follows the forking *thread*: a supervisor thread that
    # respawned the gateway used to take it down (exit 0, no log) when it ended.
    box: dict[str, ManagedProcess] = {}

    def supervise() -> None:
        box["p"] = spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log")

    t = threading.Thread(target=supervise)
    t.start()
    t.join()
    proc = box["p"]
    try:
        time.sleep(1.0)  # the death signal, if any, arrives at once
        assert proc.alive()
    finally:
        proc.kill()
