"""HJ 212 TCP server → Kafka sink against the real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from prometheus_client import CollectorRegistry

from citybrain.records import Transport
from citybrain.topics import KafkaTopics
from ingest.adapters.hj212 import FrameDecoder, Hj212Packet, decode, encode, parse_segment
from ingest.adapters.hj212.connector import Hj212Metrics, Hj212Server, Hj212ServerConfig, auth_resolver
from ingest.batch import decode_batch
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics
from tests.integration.helpers import consume, create_topics

pytestmark = pytest.mark.integration

STATIONS = 8
PER_STATION = 40


def upload(mn: str, i: int, *, pnum: int | None = None, pno: int | None = None) -> bytes:
    flag = 7 if pnum else 5
    cp = (("DataTime", "20240515103000"), (f"w0100{1 + (pno or 1) % 2}-Avg", f"{i}.5"))
    qn = f"20240515{i:09d}"
    return encode(Hj212Packet(qn=qn, st="21", cn="2061", pw="123456", mn=mn, flag=flag, pnum=pnum, pno=pno, cp=cp))


async def test_concurrent_stations_reach_kafka_and_are_answered_after_the_ack(
    kafka_bootstrap: str, topics: KafkaTopics
) -> None:
    await create_topics(kafka_bootstrap, [topics.raw], 4)
    await create_topics(kafka_bootstrap, [topics.deadletter])
    reg = CollectorRegistry()
    sink = KafkaSink(KafkaSinkConfig(kafka_bootstrap, topics, partitions=4, linger_ms=5), KafkaSinkMetrics(reg))
    mns = [f"3502110310{k:05d}" for k in range(STATIONS)]
    codes = {mn: f"3502110310{k:05d}{k % 10}x"[:17] for k, mn in enumerate(mns)}
    server = Hj212Server(
        Hj212ServerConfig(), sink, auth_resolver(codes, {c: "123456" for c in codes.values()}), Hj212Metrics(reg)
    )
    await sink.start()
    await server.start()
    rng = random.Random(4212)
    try:

        async def station(mn: str) -> list[Hj212Packet]:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            frames = []
            for i in range(PER_STATION):
                if i % 10 == 9:  # every tenth message is split in two parts, sent out of order
                    frames += [upload(mn, i, pnum=2, pno=2), upload(mn, i, pnum=2, pno=1)]
                else:
                    frames.append(upload(mn, i))
            stream = b"".join(frames)
            pos = 0
            while pos < len(stream):
                step = rng.randint(1, 700)
                writer.write(stream[pos : pos + step])
                await writer.drain()
                pos += step
            framer = FrameDecoder()
            replies: list[Hj212Packet] = []
            async with asyncio.timeout(30):
                while len(replies) < len(frames):
                    data = await reader.read(4096)
                    assert data
                    replies += [parse_segment(s) for s in framer.feed(data) if isinstance(s, bytes)]
            writer.close()
            await writer.wait_closed()
            return replies

        t0 = time.perf_counter()
        results = await asyncio.gather(*(station(mn) for mn in mns))
        elapsed = time.perf_counter() - t0
        for replies in results:
            assert {r.cn for r in replies} == {"9014"}
        # every answer came after the Kafka ack: the records are there
        records = await consume(kafka_bootstrap, topics.raw, 10**6, timeout=3)
        msgs = [m for r in records for m in decode_batch(r.value)]
        assert len(msgs) == STATIONS * PER_STATION
        assert {m.transport for m in msgs} == {Transport.HJ212}
        for mn in mns:
            mine = [m for m in msgs if m.meta_dict()["mn"] == mn]
            assert {m.device_code for m in mine} == {codes[mn]}
            # one device → one partition → arrival order kept
            qns = [decode(m.payload[: m.payload.index(b"\r\n") + 2]).qn for m in mine]
            assert qns == [f"20240515{i:09d}" for i in range(PER_STATION)]
            split = [m for m in mine if m.payload.count(b"##") == 2]
            assert len(split) == PER_STATION // 10
        assert reg.get_sample_value("citybrain_hj212_messages_forwarded_total") == STATIONS * PER_STATION
        assert reg.get_sample_value("citybrain_sink_messages_forwarded_total", {"source": "hj212"}) == len(msgs)
        print(f"\nHJ 212: {STATIONS} stations, {len(msgs)} messages answered in {elapsed:.2f}s")
    finally:
        await server.stop()
        await sink.stop()
