"""Pollution-source frames over the real HJ 212 TCP edge into stored readings (issue 19).

ST=32 wastewater and ST=31 flue-gas stations connect to the edge's TCP server, which
forwards each frame to Kafka and answers 9014 after the ack; the stream pipeline then
decodes, converts and stores them in PostgreSQL (``readings_wastewater``,
``readings_fluegas``). Two of the frames are published example packets, byte for byte
(see tests/unit/ingest/test_hj212_sources.py for where they were found).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.rules import shipped_rules
from citybrain.devices_cli import register
from citybrain.routes import sources
from citybrain.routes.context import ApiContext
from citybrain.settings import Settings
from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from devices.permits import Permit, default_limits, load_permit, save_permit
from ingest.adapters.hj212 import FrameDecoder, Hj212Packet, encode, parse_segment
from ingest.adapters.hj212.connector import Hj212Metrics, Hj212Server, Hj212ServerConfig, auth_resolver
from ingest.batch import encode_batch
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics
from tests.integration.helpers import RecordingPublisher, api_key, consume, create_topics, secure

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hj212"
WW = DeviceCode.build("350206", "0310", 17).full
FG = DeviceCode.build("350206", "0308", 18).full
NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
_BJ_2330 = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)  # 23:30 Beijing, the worked example's day
# MN as the frames carry it → device code; the published frames keep their own MNs.
MNS = {"000101": WW, "WW0001": WW, "81733553216103": FG, "FG0001": FG}
FRAMES = [
    ("000101", "wastewater_2011_published.bin", True),
    ("WW0001", "wastewater_2061_heavy_metals.bin", True),
    ("81733553216103", "fluegas_2061_published.bin", False),  # Flag=4: no answer wanted
    ("FG0001", "fluegas_2061_heavy_metals.bin", True),
]


async def test_source_frames_travel_the_tcp_edge_into_stored_readings_with_their_units(
    kafka_bootstrap: str, topics: KafkaTopics, database_url: str, models: ModelRegistry
) -> None:
    await create_topics(kafka_bootstrap, [topics.raw], 2)
    await create_topics(kafka_bootstrap, [topics.deadletter])
    reg = CollectorRegistry()
    sink = KafkaSink(KafkaSinkConfig(kafka_bootstrap, topics, partitions=2, linger_ms=5), KafkaSinkMetrics(reg))
    server = Hj212Server(Hj212ServerConfig(), sink, auth_resolver(MNS, {WW: "123456", FG: "123456"}), Hj212Metrics(reg))
    await sink.start()
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join((FIXTURES / name).read_bytes() for _, name, _ in FRAMES))
        await writer.drain()
        framer = FrameDecoder()
        replies: list[Hj212Packet] = []
        async with asyncio.timeout(30):
            while len(replies) < sum(ack for *_, ack in FRAMES):
                data = await reader.read(4096)
                assert data
                replies += [parse_segment(s) for s in framer.feed(data) if isinstance(s, bytes)]
        assert {r.cn for r in replies} == {"9014"}
        writer.close()
        records = await consume(kafka_bootstrap, topics.raw, len(FRAMES), timeout=20)
    finally:
        await server.stop()
        await sink.stop()

    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        ledger = Ledger(pool, models)
        await ledger.register(NewDevice(WW, "wastewater-source"))
        await ledger.register(NewDevice(FG, "fluegas-source"))
        preg = CollectorRegistry()
        pipe = Pipeline(
            PipelineConfig(topics=KafkaTopics("t"), rules=shipped_rules()),
            pool,
            models,
            RecordingPublisher(),
            PipelineMetrics(preg),
            ReadingStore(pool, models, StoreMetrics(preg)),
            clock=lambda: NOW,
        )
        await pipe.process([r.value for r in records])
    finally:
        await pool.close()

    with psycopg.connect(database_url) as conn:
        ww = conn.execute(
            "select ts, cod, flow, hg_hour, hg_hour_max, hg_hour_cou, cr6_hour, pb_hour, flow_hour_cou, quality, flags"
            " from readings_wastewater order by ts"
        ).fetchall()
        fg = conn.execute(
            "select ts, flow_hour, flow_hour_cou, so2_hour, so2_hour_cou, hg_hour, ni_hour, flue_pressure_hour"
            " from readings_fluegas order by ts"
        ).fetchall()
        dead = conn.execute("select count(*) from readings_extra").fetchone()
    assert dead == (0,)  # every value found its wide column
    published, hour = ww
    assert published[0] == datetime(2024, 1, 23, 4, 32, tzinfo=UTC)  # DataTime is Beijing time
    assert published[1:3] == (4653.8, 3.41)  # COD mg/L, flow L/s as sent
    # 附录B: total Hg, Cr6+ and Pb travel in µg/L; stored in mg/L. The discharge of Hg in g → kg.
    assert hour[0] == datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
    assert hour[3:9] == pytest.approx((0.05, 0.061, 0.0018, 0.1, 0.1, 36.0))
    assert hour[9] == 1 and "pb_hour" in str(hour[10])  # the M-flagged lead: kept, suspect, named
    published_gas, hour_gas = fg
    assert published_gas[0] == datetime(2024, 1, 22, 9, 0, tzinfo=UTC)
    assert published_gas[1:3] == pytest.approx((5.331, 19191.973))
    assert published_gas[7] == pytest.approx(-0.026)
    assert hour_gas[3:7] == pytest.approx((80.0, 5.76, 0.02, 0.1))


def _hour_frame(h: int, hg_ug_l: float, hg_flag: str = "N") -> bytes:
    """An hourly upload of the worked example, as the station sends it (Hg in µg/L, 附录B)."""
    local = datetime(2026, 12, 7, h, 0)
    cp = (
        ("DataTime", f"{local:%Y%m%d%H%M%S}"),
        ("w00000-Cou", "36.0"),
        ("w00000-Avg", "10.0"),
        ("w00000-Flag", "N"),
        ("w01018-Avg", "50.0"),
        ("w01018-Flag", "N"),
        ("w20111-Avg", f"{hg_ug_l}"),
        ("w20111-Flag", hg_flag),
    )
    return encode(
        Hj212Packet(qn=f"{local:%Y%m%d%H%M%S}000", st="32", cn="2061", pw="123456", mn="WW0001", flag=5, cp=cp)
    )


async def test_permit_in_the_ledger_judges_the_hourly_uploads_into_stored_alerts(
    database_url: str, models: ModelRegistry
) -> None:
    """The worked example of tests/unit/alerts/test_sources.py, with the permit saved in the ledger."""
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    try:
        await Ledger(pool, models).register(NewDevice(WW, "wastewater-source"))
        limits = default_limits(models.get("wastewater-source"), WW, caps={"cod": {"day_kg": 20.0}})
        async with pool.connection() as conn:
            await save_permit(
                conn,
                Permit("91350200TEST0001P", "Test Plating Co.", date(2026, 1, 1), date(2030, 12, 31), tuple(limits)),
            )
            saved = await load_permit(conn, "91350200TEST0001P")
        assert saved is not None and {lim.metric for lim in saved.limits} >= {"hg", "cr6", "cod"}
        preg = CollectorRegistry()
        pub = RecordingPublisher()
        pipe = Pipeline(
            PipelineConfig(topics=KafkaTopics("t"), rules=shipped_rules()),
            pool,
            models,
            pub,
            PipelineMetrics(preg),
            ReadingStore(pool, models, StoreMetrics(preg)),
            clock=lambda: datetime(2026, 12, 8, tzinfo=UTC),
        )
        frames = [_hour_frame(h, *{5: (80.0, "N"), 9: (200.0, "M")}.get(h, (30.0, "N"))) for h in range(24)]
        rx = datetime(2026, 12, 7, 16, 5, tzinfo=UTC)
        for frame in frames:  # one upload an hour, one batch each, as the worker sees them
            await pipe.process([encode_batch([RawMessage("hj212/127.0.0.1:5000", frame, rx, Transport.HJ212, WW)])])
        # The console's sources view: the permit, today's load against its cap, open exceedances.
        ctx = ApiContext(pool=pool, models=models, registry=CollectorRegistry(), clock=lambda: _BJ_2330)
        app = FastAPI()
        app.include_router(sources.build(ctx))
        secure(app, pool)
        headers = await api_key(pool, "app")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers) as c:
            view = (await c.get("/api/v1/sources", params={"district": "350206"})).json()
            elsewhere = (await c.get("/api/v1/sources", params={"district": "350203"})).json()
    finally:
        await pool.close()
    with psycopg.connect(database_url) as conn:
        alerts = conn.execute(
            "select rule, opened_at, message from alerts where rule not like '%forecast' order by opened_at"
        ).fetchall()
    assert [(r, t) for r, t, _ in alerts] == [
        ("wastewater.hg.hour_limit", datetime(2026, 12, 6, 21, tzinfo=UTC)),  # 05:00 Beijing, 80 µg/L
        ("wastewater.cod.day_cap", datetime(2026, 12, 7, 3, tzinfo=UTC)),  # 11:00 Beijing: 21.6 kg ≥ 20 kg
    ]
    assert all("91350200TEST0001P" in m for _, _, m in alerts)
    assert "GB 8978-1996 表1 第1项 总汞" in alerts[0][2]
    (item,) = view["items"]
    assert item["permit"] == {"number": "91350200TEST0001P", "holder": "Test Plating Co.", "status": "valid"}
    assert item["loads_today"] == [
        {"metric": "cod", "today_kg": pytest.approx(43.2), "day_cap_kg": 20.0, "ratio": pytest.approx(2.16)}
    ]
    assert [a["rule"] for a in item["open_alerts"]] == ["wastewater.cod.day_cap"]  # the Hg hour cleared at 06:00
    assert view["districts"] == [{"district": "350206", "sources": 1, "with_permit": 1, "alerting": 1, "over_cap": 1}]
    assert elsewhere["items"] == [] and view["date"] == "2026-12-07"
    published = [json.loads(v) for v in pub.on("t.alerts")]  # through the one outbox
    assert {(a["rule"], a["transition"]) for a in published} >= {
        ("wastewater.hg.hour_limit", "open"),
        ("wastewater.cod.day_cap", "open"),
    }


async def test_permit_file_imports_and_exports_through_the_cli(
    database_url: str, models: ModelRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``citybrain devices permit import FILE`` then ``export NUMBER``: defaults filled, own values kept."""
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        await Ledger(pool, models).register(NewDevice(WW, "wastewater-source"))
    finally:
        await pool.close()
    doc = {
        "number": "91350200TEST0002P",
        "holder": "Test Plating Co.",
        "valid_from": "2026-01-01",
        "valid_to": "2030-12-31",
        "outlets": [
            {
                "device": WW,
                "limits": {"cod": {"day_kg": 20, "year_kg": 5000}, "hg": {"limit": 0.03, "clause": "permit §3.1"}},
            }
        ],
    }
    src = tmp_path / "permit.yaml"
    src.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    settings = Settings(database_url=database_url)

    def cli(*argv: str) -> int:
        args = parser.parse_args(["devices", "permit", *argv])
        return int(args.func(args, settings))

    assert await asyncio.to_thread(cli, "import", str(src)) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(doc | {"outlets": [{"device": WW, "limits": {"nope": {"limit": 1}}}]}), encoding="utf-8"
    )
    assert await asyncio.to_thread(cli, "import", str(bad)) == 2
    assert await asyncio.to_thread(cli, "export", "no-such-permit") == 2
    with psycopg.connect(database_url) as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "select metric, conc_limit, clause, day_cap_kg from permit_limits where permit_no = %s",
                ("91350200TEST0002P",),
            ).fetchall()
        }
    assert rows["hg"] == (0.03, "permit §3.1", None)  # the permit's own limit over GB 8978's 0.05
    assert rows["cr6"] == (0.5, "GB 8978-1996 表1 第5项 六价铬", None)  # a default filled in
    assert rows["cod"] == (None, "permit 91350200TEST0002P", 20.0)  # load-capped only
    capsys.readouterr()
    assert await asyncio.to_thread(cli, "export", "91350200TEST0002P") == 0
    exported = yaml.safe_load(capsys.readouterr().out)
    assert exported["outlets"][0]["limits"]["hg"] == {"clause": "permit §3.1", "limit": 0.03}
    assert exported["outlets"][0]["limits"]["cod"] == {
        "clause": "permit 91350200TEST0002P",
        "day_kg": 20.0,
        "year_kg": 5000.0,
    }
