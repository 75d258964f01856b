"""NB-IoT platform push webhook against real PostgreSQL and the real Kafka-protocol broker."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.routes import webhook
from citybrain.routes.context import ApiContext
from core.topics import KafkaTopics
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.manhole import decode as decode_frame
from ingest.batch import decode_batch
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics
from tests.integration.helpers import consume, create_topics

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
FRAME = (Path(__file__).resolve().parents[1] / "fixtures" / "manhole" / "alarm_lid_open.bin").read_bytes()
COVER = DeviceCode.build("350203", "0101", 7).full
POLE_ID = "ctwing-dev-0001"


@dataclass
class Api:
    client: httpx.AsyncClient
    registry: CollectorRegistry
    topics: KafkaTopics
    bootstrap: str


@pytest.fixture
async def api(
    database_url: str, kafka_bootstrap: str, topics: KafkaTopics, models: ModelRegistry
) -> AsyncIterator[Api]:
    await create_topics(kafka_bootstrap, [topics.raw], 4)
    await create_topics(kafka_bootstrap, [topics.deadletter])
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    reg = CollectorRegistry()
    sink = KafkaSink(
        KafkaSinkConfig(kafka_bootstrap, topics, partitions=4, source="webhook", linger_ms=5), KafkaSinkMetrics(reg)
    )
    await sink.start()
    ledger = Ledger(pool, models)
    await ledger.register(NewDevice(code=COVER, model="manhole-cover", attributes={"nb_device_id": "oc-8f2a"}))
    app = FastAPI()
    app.include_router(webhook.build(ApiContext(pool, models, reg), webhook.WebhookDeps(sink, TOKEN)))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    try:
        yield Api(client, reg, topics, kafka_bootstrap)
    finally:
        await client.aclose()
        await sink.stop()
        await pool.close()


def oc_push(data: dict[str, object], device_id: str = "oc-8f2a") -> dict[str, object]:
    return {
        "notifyType": "deviceDataChanged",
        "requestId": "r-1",
        "deviceId": device_id,
        "gatewayId": device_id,
        "service": {"serviceId": "Cover", "serviceType": "Cover", "data": data, "eventTime": "20251129T000100Z"},
    }


async def test_binary_and_json_pushes_reach_kafka_after_the_ack(api: Api) -> None:
    headers = {webhook.TOKEN_HEADER: TOKEN}
    r1 = await api.client.post(
        "/api/v1/ingest/webhook/oceanconnect", json=oc_push({"rawData": FRAME.hex()}), headers=headers
    )
    assert r1.status_code == 200, r1.text
    r2 = await api.client.post(
        "/api/v1/ingest/webhook/oceanconnect", json=oc_push({"tilt": 3.5, "note": "x"}), headers=headers
    )
    assert r2.status_code == 200
    ctwing = {
        "messageType": "dataReport",
        "deviceId": COVER,  # no nb_device_id match: the code itself
        "timestamp": 1764374460000,
        "payload": {"APPdata": base64.b64encode(FRAME).decode()},
    }
    r3 = await api.client.post("/api/v1/ingest/webhook/ctwing", json=ctwing, headers=headers)
    assert r3.status_code == 200 and r3.json() == {"accepted": 1}
    ignored = await api.client.post(
        "/api/v1/ingest/webhook/ctwing",
        json={"messageType": "deviceOnlineOfflineReport", "deviceId": COVER},
        headers=headers,
    )
    assert ignored.json()["ignored"] is True

    records = await consume(api.bootstrap, api.topics.raw, 3, timeout=10)
    msgs = [m for r in records for m in decode_batch(r.value)]
    assert len(msgs) == 3
    assert {m.device_code for m in msgs} == {COVER}
    binary = [m for m in msgs if m.meta_dict()["format"] == "binary"]
    assert [decode_frame(m.payload).counter for m in binary] == [43, 43]
    (js,) = [json.loads(m.payload) for m in msgs if m.meta_dict()["format"] == "json"]
    assert js == {"v": 1, "ts": "2025-11-29T00:01:00+00:00", "metrics": {"tilt": 3.5}}
    assert {m.topic for m in msgs} == {"webhook/oceanconnect", "webhook/ctwing"}
    assert (
        api.registry.get_sample_value("citybrain_webhook_requests_total", {"platform": "oceanconnect", "result": "ok"})
        == 2
    )


async def test_bad_token_bad_body_and_unknown_device(api: Api) -> None:
    url = "/api/v1/ingest/webhook/oceanconnect"
    # The webhook authenticates platforms by its shared token only: an API key is no substitute.
    for headers in ({}, {webhook.TOKEN_HEADER: "wrong"}, {"X-Api-Key": "cbk_abcdefgh_" + "x" * 32}):
        r = await api.client.post(url, json=oc_push({"tilt": 1}), headers=headers)
        assert r.status_code == 401
    assert (
        api.registry.get_sample_value(
            "citybrain_webhook_requests_total", {"platform": "oceanconnect", "result": "unauthorized"}
        )
        == 3
    )
    ok = {webhook.TOKEN_HEADER: TOKEN}
    bad_json = await api.client.post(url, content=b"{not json", headers=ok)
    assert bad_json.status_code == 400 and bad_json.json()["reason"] == "bad_json"
    bad_frame = await api.client.post(url, json=oc_push({"rawData": "%%%"}), headers=ok)
    assert bad_frame.json()["reason"] == "bad_frame_encoding"
    unknown = await api.client.post(url, json=oc_push({"tilt": 1}, device_id="nobody"), headers=ok)
    assert unknown.status_code == 400 and unknown.json()["reason"] == "unknown_device"
    big = await api.client.post(url, content=b"x" * 70000, headers=ok)
    assert big.status_code == 413
    dead = await consume(api.bootstrap, api.topics.deadletter, 3, timeout=10)
    assert sorted(dict(r.headers)["reason"].decode() for r in dead) == [
        "bad_frame_encoding",
        "bad_json",
        "unknown_device",
    ]
    assert b"{not json" in {r.value for r in dead}
    # nothing reached the raw topic
    assert await consume(api.bootstrap, api.topics.raw, 1, timeout=1.0) == []


async def test_a_nul_in_the_device_id_is_dead_lettered_not_a_500(api: Api) -> None:
    # The webhook reads its body raw (the API edge does not scan it); PostgreSQL text cannot hold
    # NUL, so the ledger lookup answered 500 (issue 15). Now: a bad body, kept as a dead letter.
    body = json.dumps(oc_push({"tilt": 1}, device_id="oc-\u0000-1")).encode()
    r = await api.client.post(
        "/api/v1/ingest/webhook/oceanconnect",
        content=body,
        headers={webhook.TOKEN_HEADER: TOKEN, "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["reason"] == "bad_body", r.text
    (dead,) = await consume(api.bootstrap, api.topics.deadletter, 1, timeout=10)
    assert dead.value == body
