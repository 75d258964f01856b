"""Real messages validate against the published JSON Schemas.

The readings, alerts and dead letters come out of :class:`streams.pipeline.Pipeline`
(with a publisher that records what it would send to Kafka); the telemetry
payloads are what the platform's own encoder and the documented examples send.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.engine import DeviceContext, evaluate_device
from alerts.rules import shipped_rules
from core.records import RawMessage, Reading, Transport
from core.topics import KafkaTopics
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from streams import schemas
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics
from tests.integration.helpers import RecordingPublisher

pytestmark = pytest.mark.integration

CODE = "35020603080000017"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schemas.load(name), format_checker=jsonschema.FormatChecker())


# The pipeline test's data and clock: fixed, and the pipeline reads this clock, not today's.
T0 = datetime(2026, 11, 29, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def _raw(payload: bytes) -> RawMessage:
    return RawMessage(f"citybrain/up/{CODE}/telemetry", payload, NOW, Transport.MQTT, CODE)


async def test_pipeline_output_validates(database_url: str, models: ModelRegistry) -> None:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    pub = RecordingPublisher()
    try:
        reg = CollectorRegistry()
        pipe = Pipeline(
            PipelineConfig(topics=KafkaTopics("t"), rules=shipped_rules()),
            pool,
            models,
            pub,
            PipelineMetrics(reg),
            ReadingStore(pool, models, StoreMetrics(reg)),
            clock=lambda: NOW,
        )
        await Ledger(pool, models).register(NewDevice(CODE, "air-station"))
        t0 = T0
        telemetry = [
            encode(t0, {"pm25": 30, "humidity": 101.0}),  # suspect: outside the physical range
            encode(t0 + timedelta(minutes=1), {"pm25": 90, "co": (1.2, "ppm")}, ts_format="ms"),
            encode(t0 + timedelta(minutes=2), {"pm25": 95}, ts_format="s"),
            *[encode(t0 + timedelta(minutes=m), {"pm25": 40}) for m in (3, 4, 5)],
            json.dumps({"v": 1, "records": [{"ts": "2026-11-29T08:06:00+08:00", "metrics": {"pm10": 50}}]}).encode(),
        ]
        bad = [b"{not json", json.dumps({"v": 1, "ts": "2026-11-29T08:00:00", "metrics": {"pm25": 1}}).encode()]
        tv = _validator("telemetry.v1")
        for p in telemetry:
            tv.validate(json.loads(p))
        assert not tv.is_valid(json.loads(bad[1]))
        await pipe.process([encode_batch([_raw(p) for p in telemetry + bad])])

        readings = [json.loads(v) for t, _, v, _ in pub.sent if t == "t.readings.air"]
        alerts = [json.loads(v) for t, _, v, _ in pub.sent if t == "t.alerts"]
        dead = [dict(h) for t, _, _, h in pub.sent if t == "t.deadletter"]
        assert len(readings) == 7 and len(alerts) >= 2 and len(dead) == 2
        assert any(r["quality"] == "suspect" for doc in readings for r in doc["readings"])
        rv, av, dv = _validator("readings.v1"), _validator("alerts.v1"), _validator("deadletter-headers.v1")
        for doc in readings:
            rv.validate(doc)
        for doc in alerts:
            av.validate(doc)
        for headers in dead:
            dv.validate({k: v.decode() for k, v in headers.items()})
    finally:
        await pool.close()


def test_rule_engine_alerts_validate() -> None:
    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    readings = [
        Reading(CODE, "pm25", t0 + timedelta(minutes=i), t0, v, "ug/m3")
        for i, v in enumerate([10, 140.5, 150.0, 30, 30, 30, 30])
    ]
    ctx = DeviceContext(CODE, "350206", "air", model="air-station")
    transitions, _ = evaluate_device(shipped_rules().for_class("air"), readings, ctx, {}, {}, 0)
    assert transitions
    av = _validator("alerts.v1")
    for t in transitions:
        av.validate(t.alert.to_json())
    broken = transitions[0].alert.to_json() | {"severity": "apocalyptic"}
    assert not av.is_valid(broken)
