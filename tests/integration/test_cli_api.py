"""The real ``citybrain api`` process (as the platform spawns it) on real PostgreSQL and Kafka.

Issue 15, defect 4: the NB-IoT push is served by the command itself (it was built without the
ingest side, so the URL and token the demo printed answered 404). Defect 8: uvicorn believed
X-Forwarded-For from 127.0.0.1 by default, so spoofed addresses dodged the per-address login
limit and were written to the audit log; now only CITYBRAIN_TRUSTED_PROXIES is believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from citybrain.harness import free_port, spawn
from citybrain.routes.webhook import TOKEN_HEADER
from citybrain.security.audit import AuditLog
from core.topics import KafkaTopics
from devices.code import DeviceCode
from devices.ledger import NewDevice
from devices.models import ModelRegistry
from ingest.batch import decode_batch
from tests.integration.helpers import consume, create_topics, open_ledger, port_open, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKEN = "cli-webhook-token"
COVER = DeviceCode.build("350203", "0101", 9).full


@contextlib.contextmanager
def citybrain_api(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, topics: KafkaTopics, **settings: str
) -> Iterator[str]:
    """Run ``python -m citybrain.cli api`` with these CITYBRAIN_* settings; yields its URL once healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYBRAIN_")}
    env.update(
        {
            "CITYBRAIN_DATABASE_URL": database_url,
            "CITYBRAIN_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CITYBRAIN_TOPIC_PREFIX": topics.prefix,
            "CITYBRAIN_PARTITIONS": "4",
            "CITYBRAIN_DATA_DIR": str(tmp_path),
            # uvicorn's own default source of trusted proxies: the API must not read it.
            "FORWARDED_ALLOW_IPS": "*",
            **{f"CITYBRAIN_{k.upper()}": v for k, v in settings.items()},
        }
    )
    argv = [sys.executable, "-m", "citybrain.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn("api", argv, tmp_path / f"api-{port}.log", env=env)
    try:
        assert wait_for(lambda: port_open(port) or not proc.alive(), timeout=60), proc.log_tail()
        assert proc.alive(), proc.log_tail()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def oc_push(device_id: str) -> dict[str, object]:
    return {
        "notifyType": "deviceDataChanged",
        "deviceId": device_id,
        "service": {"serviceId": "Cover", "data": {"tilt": 4.5}, "eventTime": "20251129T000100Z"},
    }


async def _push(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/api/v1/ingest/webhook/oceanconnect", json=oc_push("oc-cli-1"), headers=headers)


async def test_citybrain_api_serves_the_nbiot_push_into_kafka(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, topics: KafkaTopics, models: ModelRegistry
) -> None:
    await create_topics(kafka_bootstrap, [topics.raw], 4)
    await create_topics(kafka_bootstrap, [topics.deadletter])
    async with open_ledger(database_url, models) as ledger:
        await ledger.register(NewDevice(code=COVER, model="manhole-cover", attributes={"nb_device_id": "oc-cli-1"}))
    with citybrain_api(tmp_path, database_url, kafka_bootstrap, topics, webhook_token=TOKEN) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            wrong = await _push(client, {TOKEN_HEADER: "not-the-token"})
            assert wrong.status_code == 401, wrong.text
            # The sink connects in the background; until then the push is refused (503) and may be retried.
            ok = await _push(client, {TOKEN_HEADER: TOKEN})
            for _ in range(100):
                if ok.status_code != 503:
                    break
                await asyncio.sleep(0.2)
                ok = await _push(client, {TOKEN_HEADER: TOKEN})
            assert ok.status_code == 200 and ok.json() == {"accepted": 1}, ok.text
    # Acknowledged only after Kafka had it: it is there, even with the API gone.
    records = await consume(kafka_bootstrap, topics.raw, 1, timeout=20)
    msgs = [m for r in records for m in decode_batch(r.value)]
    assert [(m.device_code, m.topic) for m in msgs] == [(COVER, "webhook/oceanconnect")]


async def test_citybrain_api_without_a_token_refuses_pushes_plainly(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    with citybrain_api(tmp_path, database_url, kafka_bootstrap, topics) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for headers in ({}, {TOKEN_HEADER: ""}, {TOKEN_HEADER: "anything"}):
                r = await _push(client, headers)
                assert r.status_code == 503, r.text
                assert "CITYBRAIN_WEBHOOK_TOKEN is not set" in r.json()["detail"]


async def _failed_logins(client: httpx.AsyncClient, spoofed: list[str]) -> list[int]:
    """One failed login per spoofed address (each under its own user name), until the first 429."""
    statuses = []
    for address in spoofed:
        r = await client.post(
            "/api/v1/session",
            json={"username": f"nobody-{uuid.uuid4().hex[:8]}", "password": "wrong-password-123"},
            headers={"X-Forwarded-For": address},
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    return statuses


async def _login_ips(database_url: str) -> set[str | None]:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False)
    await pool.open(wait=True)
    try:
        return {row.ip for row in await AuditLog(pool).query(action="session.login", limit=1000)}
    finally:
        await pool.close()


async def test_forwarded_for_from_loopback_is_not_believed_by_default(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    # Failed logins refill one per 15 s per address after a burst of 20: the spoofing peer
    # is throttled as one address, however many it claims (60 is far more than the burst).
    spoofed = [f"203.0.113.{i}" for i in range(1, 61)]
    with citybrain_api(tmp_path, database_url, kafka_bootstrap, topics) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            statuses = await _failed_logins(client, spoofed)
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    assert await _login_ips(database_url) == {"127.0.0.1"}


async def test_forwarded_for_is_believed_from_a_configured_proxy(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    spoofed = [f"198.51.100.{i}" for i in range(1, 26)]
    with citybrain_api(tmp_path, database_url, kafka_bootstrap, topics, trusted_proxies="127.0.0.1/32,::1") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            statuses = await _failed_logins(client, spoofed)
    # Each forwarded client has its own bucket: 25 failures from 25 clients are not throttled.
    assert statuses == [401] * len(spoofed)
    assert await _login_ips(database_url) == set(spoofed)
