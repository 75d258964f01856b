"""HJ 212 TCP server → Kafka sink against the real Kafka-protocol broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from citybrain.devices_cli import register
from citybrain.harness import ManagedProcess, Services, free_port, spawn
from citybrain.settings import Settings
from core.records import Transport
from core.topics import KafkaTopics
from devices.code import DeviceCode
from devices.ledger import Ledger, NewDevice
from devices.models import ModelRegistry
from ingest.adapters.hj212 import FrameDecoder, Hj212Packet, cp_params, decode, encode, parse_segment
from ingest.adapters.hj212.connector import Hj212Metrics, Hj212Server, Hj212ServerConfig, auth_resolver
from ingest.adapters.hj212.passwords import load_pw_hashes, set_pw
from ingest.batch import decode_batch
from ingest.kafka_sink import KafkaSink, KafkaSinkConfig, KafkaSinkMetrics
from simulators.encoders import DEFAULT_PW
from tests.integration.helpers import consume, create_topics, wait_for

pytestmark = pytest.mark.integration

STATIONS = 8
PER_STATION = 40
CP_HOUR = (("DataTime", "20240515100000"), ("w01001-Avg", "7.2"))


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


async def test_pw_provisioned_in_the_ledger_is_checked(
    kafka_bootstrap: str, topics: KafkaTopics, database_url: str, models: ModelRegistry, tmp_path: Path
) -> None:
    """``devices credentials rotate CODE --hj212 --pw …`` → hash in the ledger → the edge's resolver → PW check."""
    code = DeviceCode.build("350211", "0308", 7).full
    other = DeviceCode.build("350211", "0308", 8).full
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        ledger = Ledger(pool, models)
        for c in (code, other):
            await ledger.register(NewDevice(c, "water-station"), actor="test")
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        settings = Settings(database_url=database_url)

        def cli(*argv: str) -> int:
            args = parser.parse_args(["devices", "credentials", *argv])
            return int(args.func(args, settings))

        assert await asyncio.to_thread(cli, "rotate", code, "--hj212", "--pw", "Ab12cd") == 0
        assert await asyncio.to_thread(cli, "rotate", other, "--hj212", "--pw", "toolong7") == 2
        assert await asyncio.to_thread(cli, "rotate", DeviceCode.build("350211", "0308", 9999).full, "--hj212") == 2
        async with pool.connection() as conn:
            hashes = await load_pw_hashes(conn)
        assert list(hashes) == [code] and hashes[code].startswith("$scrypt$ln=13,")
        assert "Ab12cd" not in str(hashes)
    finally:
        await pool.close()

    await create_topics(kafka_bootstrap, [topics.raw], 4)
    await create_topics(kafka_bootstrap, [topics.deadletter])
    reg = CollectorRegistry()
    sink = KafkaSink(KafkaSinkConfig(kafka_bootstrap, topics, partitions=4, linger_ms=5), KafkaSinkMetrics(reg))
    server = Hj212Server(
        Hj212ServerConfig(), sink, auth_resolver({code: code, other: other}, pw_hashes=hashes), Hj212Metrics(reg)
    )
    await sink.start()
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

        def frame_of(mn: str, i: int, pw: str) -> bytes:
            cp = (("DataTime", "20240515103000"), ("w01001-Avg", f"7.{i}"))
            qn = f"20240515{i:09d}"
            return encode(Hj212Packet(qn=qn, st="21", cn="2061", pw=pw, mn=mn, flag=5, cp=cp))

        writer.write(
            frame_of(code, 1, "Ab12cd")
            + frame_of(code, 2, "123456")  # wrong PW
            + frame_of(other, 3, "123456")  # no PW provisioned
            + frame_of(code, 4, "Ab12cd")
        )
        await writer.drain()
        framer = FrameDecoder()
        replies: list[Hj212Packet] = []
        async with asyncio.timeout(20):
            while len(replies) < 4:
                data = await reader.read(4096)
                assert data
                replies += [parse_segment(s) for s in framer.feed(data) if isinstance(s, bytes)]
        # Refusals are answered at once; uploads after their Kafka ack.
        assert sorted((r.cn, r.qn) for r in replies) == [
            ("9011", "20240515000000002"),
            ("9011", "20240515000000003"),
            ("9014", "20240515000000001"),
            ("9014", "20240515000000004"),
        ]
        writer.close()
        records = await consume(kafka_bootstrap, topics.raw, 2, timeout=10)
        msgs = [m for r in records for m in decode_batch(r.value)]
        assert [decode(m.payload).qn for m in msgs] == ["20240515000000001", "20240515000000004"]
        assert reg.get_sample_value("citybrain_hj212_auth_failures_total", {"reason": "bad_pw"}) == 1
        assert reg.get_sample_value("citybrain_hj212_auth_failures_total", {"reason": "no_pw"}) == 1
    finally:
        await server.stop()
        await sink.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as r:
        return str(r.read().decode())


async def test_edge_process_checks_pw_from_the_ledger(
    services: Services, database_url: str, models: ModelRegistry, topics: KafkaTopics, tmp_path: Path
) -> None:
    """``citybrain edge`` as deployed: PW hashes read from the ledger, CITYBRAIN_HJ212_CHECK_PW on by default."""
    code = DeviceCode.build("350203", "0308", 21).full
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into devices (code, alias, model, device_class, district, state, created_by, updated_by)"
            " values (%s, %s, 'water-station@1', 'water', '350203', 'registered', 't', 't')",
            (code, code[:16]),
        )
        set_pw(conn, code, DEFAULT_PW, actor="test")
    async with edge_process(services, database_url, topics, tmp_path) as (proc, hj212_port, metrics_port):
        reader, writer = await asyncio.open_connection("127.0.0.1", hj212_port)
        good = encode(
            Hj212Packet(qn="20240515103000001", st="32", cn="2061", pw=DEFAULT_PW, mn=code, flag=5, cp=CP_HOUR)
        )
        bad = encode(Hj212Packet(qn="20240515103000002", st="32", cn="2061", pw="000000", mn=code, flag=5, cp=CP_HOUR))
        writer.write(bad + good)
        await writer.drain()
        framer = FrameDecoder()
        replies: list[Hj212Packet] = []
        async with asyncio.timeout(20):
            while len(replies) < 2:
                data = await reader.read(4096)
                assert data, proc.log_tail()
                replies += [parse_segment(s) for s in framer.feed(data) if isinstance(s, bytes)]
        writer.close()
        assert sorted((r.qn, r.cn) for r in replies) == [("20240515103000001", "9014"), ("20240515103000002", "9011")]
        metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'citybrain_hj212_auth_failures_total{reason="bad_pw"} 1.0' in metrics
        assert "wrong PW for MN" in proc.log_tail(200) and "000000" not in proc.log_tail(200)


@contextlib.asynccontextmanager
async def edge_process(
    services: Services, database_url: str, topics: KafkaTopics, tmp_path: Path, **settings: str
) -> AsyncIterator[tuple[ManagedProcess, int, int]]:
    """``citybrain edge`` as deployed, with extra ``CITYBRAIN_*`` settings.

    Yields:
        The process, its HJ 212 port and its /metrics port.
    """
    assert services.kafka_bootstrap and services.mqtt_url
    await create_topics(services.kafka_bootstrap, [topics.raw], 4)
    await create_topics(services.kafka_bootstrap, [topics.deadletter])
    hj212_port, metrics_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(services.env())
    env.update(CITYBRAIN_DATABASE_URL=database_url, CITYBRAIN_TOPIC_PREFIX=topics.prefix, PYTHONUNBUFFERED="1")
    env.update({f"CITYBRAIN_{k.upper()}": v for k, v in settings.items()})
    argv = [sys.executable, "-m", "citybrain.cli", "edge", "--hj212-port", str(hj212_port)]
    proc = spawn("edge", [*argv, "--metrics-port", str(metrics_port)], tmp_path / "edge.log", env=env)
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return not proc.alive()

        assert await asyncio.to_thread(wait_for, healthy, 60), proc.log_tail()
        assert proc.alive(), proc.log_tail()
        yield proc, hj212_port, metrics_port
    finally:
        proc.stop()


def _sample(metrics: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", metrics, re.MULTILINE)
    return None if found is None else float(found.group(1))


async def _metric_reaches(metrics_port: int, name: str, value: float, timeout: float = 20) -> bool:
    def reached() -> bool:
        return _sample(_get(f"http://127.0.0.1:{metrics_port}/metrics"), name) == value

    return bool(await asyncio.to_thread(wait_for, reached, timeout))


async def _exchange(port: int, frames: list[bytes], n: int) -> list[Hj212Packet]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(frames))
        await writer.drain()
        framer = FrameDecoder()
        replies: list[Hj212Packet] = []
        async with asyncio.timeout(20):
            while len(replies) < n:
                data = await reader.read(4096)
                assert data, "the edge closed the connection"
                replies += [parse_segment(s) for s in framer.feed(data) if isinstance(s, bytes)]
        return replies
    finally:
        writer.close()


async def test_edge_sees_a_pw_provisioned_after_it_started(
    services: Services, database_url: str, models: ModelRegistry, topics: KafkaTopics, tmp_path: Path
) -> None:
    """Issue 15 defect 2: no PW at start, ``credentials rotate --hj212`` later: seen at the next refresh."""
    code = DeviceCode.build("350203", "0308", 22).full
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into devices (code, alias, model, device_class, district, state, created_by, updated_by)"
            " values (%s, %s, 'water-station@1', 'water', '350203', 'registered', 't', 't')",
            (code, code[:16]),
        )

    def frame_of(i: int, pw: str) -> bytes:
        return encode(Hj212Packet(qn=f"2024051510300{i:04d}", st="21", cn="2061", pw=pw, mn=code, flag=5, cp=CP_HOUR))

    # A short refresh period stands in for the deployed 30 s; readiness is read off /metrics, never slept for.
    async with edge_process(services, database_url, topics, tmp_path, hj212_refresh_s="0.2") as (proc, port, mport):
        assert await _metric_reaches(mport, "citybrain_hj212_known_stations", 1), proc.log_tail()
        assert await _metric_reaches(mport, "citybrain_hj212_stations_with_pw", 0), proc.log_tail()
        (before,) = await _exchange(port, [frame_of(1, "Ab12cd")], 1)
        assert (before.cn, cp_params(before)["QnRtn"]) == ("9011", "3"), "refused: no PW provisioned yet"

        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["devices", "credentials", "rotate", code, "--hj212", "--pw", "Ab12cd"])
        assert await asyncio.to_thread(args.func, args, Settings(database_url=database_url)) == 0

        assert await _metric_reaches(mport, "citybrain_hj212_stations_with_pw", 1), proc.log_tail()
        replies = await _exchange(port, [frame_of(2, "Ab12cd"), frame_of(3, "Zz9999")], 2)
        assert sorted((r.qn, r.cn, cp_params(r).get("QnRtn")) for r in replies) == [
            ("20240515103000002", "9014", None),
            ("20240515103000003", "9011", "3"),
        ]
        metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{mport}/metrics")
        assert 'citybrain_hj212_auth_failures_total{reason="no_pw"} 1.0' in metrics
        assert 'citybrain_hj212_auth_failures_total{reason="bad_pw"} 1.0' in metrics
        assert (_sample(metrics, 'citybrain_hj212_directory_refreshes_total{result="ok"}') or 0) >= 2


async def test_edge_closes_slow_clients_and_caps_connections_per_address(
    services: Services, database_url: str, topics: KafkaTopics, tmp_path: Path
) -> None:
    """Issue 15 defect 10: a byte a second reset the 600 s idle timer for ever; one address could hold any number."""
    settings = {"hj212_frame_deadline_s": "0.5", "hj212_max_connections_per_address": "3"}
    async with edge_process(services, database_url, topics, tmp_path, **settings) as (proc, port, mport):
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        # The fourth from the same address is closed at once, without a byte read.
        r4, w4 = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            assert await r4.read() == b""
        w4.close()
        frame = encode(
            Hj212Packet(qn="20240515103000001", st="21", cn="2061", pw="123456", mn="x1", flag=5, cp=CP_HOUR)
        )
        closed_after: list[int] = []

        async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Well within the idle timeout between bytes, never a whole frame within the deadline.
            sent = 0
            try:
                async with asyncio.timeout(15):
                    for byte in frame:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        sent += 1
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.1):
                                if await reader.read(1) == b"":
                                    break
            except ConnectionError:
                pass
            closed_after.append(sent)
            writer.close()

        await asyncio.gather(*(dribble(r, w) for r, w in slow))
        assert len(closed_after) == 3 and max(closed_after) < len(frame), closed_after
        assert await _metric_reaches(mport, "citybrain_hj212_frame_deadline_total", 3), proc.log_tail()
        metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{mport}/metrics")
        assert _sample(metrics, 'citybrain_hj212_connections_refused_total{reason="per_address"}') == 1
        assert _sample(metrics, 'citybrain_hj212_disconnects_total{reason="frame_deadline"}') == 3
        # The slots are free again: a station sending whole frames is served.
        (reply,) = await _exchange(port, [frame], 1)
        assert reply.cn == "9011"  # unknown MN, answered: the connection was accepted
