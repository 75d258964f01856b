"""The HJ 212 TCP connector over loopback sockets with an in-memory sink (no external servers)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from core.records import RawMessage, Transport
from devices.index import DeviceInfo
from ingest.adapters.hj212 import (
    FrameDecoder,
    Hj212Packet,
    cp_params,
    decode,
    encode,
    parse_segment,
    reply_9011,
    reply_9012,
)
from ingest.adapters.hj212.connector import (
    DeviceAuth,
    Hj212Metrics,
    Hj212Server,
    Hj212ServerConfig,
    auth_resolver,
    mn_map,
)
from ingest.errors import CommandError

MN = "350206030800001"
CODE = "35020603080000017"


class MemorySink:
    """Collects messages; acks at once, or only when ``release`` is called (``hold=True``)."""

    def __init__(self, hold: bool = False) -> None:
        self.messages: list[RawMessage] = []
        self.held: list[asyncio.Future[None]] = []
        self.hold = hold

    async def submit(self, raw: RawMessage) -> asyncio.Future[None]:
        self.messages.append(raw)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append(fut)
        else:
            fut.set_result(None)
        return fut

    async def dead_letter(
        self, payload: bytes, reason: str, detail: str, topic: str, received_at: datetime
    ) -> asyncio.Future[None]:
        raise NotImplementedError

    def release(self) -> None:
        for fut in self.held:
            fut.set_result(None)
        self.held.clear()


def upload(
    mn: str = MN, i: int = 0, *, flag: int = 5, pw: str = "123456", pnum: int | None = None, pno: int | None = None
) -> bytes:
    cp = (("DataTime", "20240515103000"), ("a34004-Rtd", f"{i}.5"), ("a34004-Flag", "N"))
    return encode(
        Hj212Packet(
            qn=f"20240515103000{i % 1000:03d}", st="22", cn="2011", pw=pw, mn=mn, flag=flag, pnum=pnum, pno=pno, cp=cp
        )
    )


async def read_frames(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> list[Hj212Packet]:
    framer = FrameDecoder()
    out: list[Hj212Packet] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            data = await reader.read(4096)
            assert data, "connection closed"
            out.extend(parse_segment(s) for s in framer.feed(data) if isinstance(s, bytes))
    return out


@pytest.fixture
async def server_factory() -> AsyncIterator[object]:
    servers: list[Hj212Server] = []

    async def make(sink: MemorySink, resolve: object = None, **cfg: object) -> tuple[Hj212Server, CollectorRegistry]:
        reg = CollectorRegistry()
        resolve = resolve or auth_resolver({MN: CODE}, {CODE: "123456"})
        srv = Hj212Server(Hj212ServerConfig(**cfg), sink, resolve, Hj212Metrics(reg))  # type: ignore[arg-type]
        await srv.start()
        servers.append(srv)
        return srv, reg

    yield make
    for srv in servers:
        await srv.stop()


async def test_split_and_coalesced_frames_from_concurrent_stations(server_factory) -> None:
    sink = MemorySink()
    mns = [f"35020603080{k:04d}" for k in range(5)]
    codes = {mn: f"3502060308{k:05d}7" for k, mn in enumerate(mns)}
    srv, reg = await server_factory(sink, auth_resolver(codes, {c: "123456" for c in codes.values()}))
    rng = random.Random(212)
    n_per = 20

    async def station(mn: str) -> list[Hj212Packet]:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        stream = b"".join(upload(mn, i) for i in range(n_per))
        pos = 0
        while pos < len(stream):  # random cuts: frames split across writes and several per write
            step = rng.randint(1, 400)
            writer.write(stream[pos : pos + step])
            await writer.drain()
            pos += step
        replies = await read_frames(reader, n_per)
        writer.close()
        await writer.wait_closed()
        return replies

    results = await asyncio.gather(*(station(mn) for mn in mns))
    for mn, replies in zip(mns, results, strict=True):
        assert [r.cn for r in replies] == ["9014"] * n_per
        assert [r.qn for r in replies] == [f"20240515103000{i:03d}" for i in range(n_per)]
        got = [m for m in sink.messages if m.meta_dict()["mn"] == mn]
        assert [decode(m.payload) for m in got] == [decode(upload(mn, i)) for i in range(n_per)]
        assert {m.transport for m in got} == {Transport.HJ212}
        assert all(m.topic.startswith("hj212/127.0.0.1:") for m in got)
    assert reg.get_sample_value("citybrain_hj212_frames_total", {"kind": "upload"}) == n_per * len(mns)
    assert reg.get_sample_value("citybrain_hj212_messages_forwarded_total") == n_per * len(mns)


async def test_answer_only_after_the_sink_ack(server_factory) -> None:
    sink = MemorySink(hold=True)
    srv, _ = await server_factory(sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload())
    await writer.drain()
    for _ in range(50):
        if sink.messages:
            break
        await asyncio.sleep(0.01)
    assert len(sink.messages) == 1 and sink.messages[0].device_code == CODE
    with pytest.raises(TimeoutError):
        await read_frames(reader, 1, timeout=0.2)
    sink.release()
    (reply,) = await read_frames(reader, 1)
    assert reply.cn == "9014"
    writer.close()


async def test_wrong_pw_and_unknown_mn_get_9011_and_are_counted(server_factory) -> None:
    sink = MemorySink()
    srv, reg = await server_factory(sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(pw="654321") + upload(mn="NOPE42") + b"##0010garbage\r\n")
    await writer.drain()
    replies = await read_frames(reader, 2)
    assert [(r.cn, cp_params(r)["QnRtn"]) for r in replies] == [("9011", "3"), ("9011", "4")]
    assert sink.messages == []
    assert reg.get_sample_value("citybrain_hj212_auth_failures_total", {"reason": "bad_pw"}) == 1
    assert reg.get_sample_value("citybrain_hj212_auth_failures_total", {"reason": "unknown_mn"}) == 1
    writer.close()


async def test_bad_frames_are_counted_and_the_connection_keeps_going(server_factory) -> None:
    sink = MemorySink()
    srv, reg = await server_factory(sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    bad_crc = upload()[:-6] + b"0000\r\n"
    writer.write(bad_crc + b"noise" + upload(i=1))
    await writer.drain()
    (reply,) = await read_frames(reader, 1)
    assert reply.qn.endswith("001")
    assert reg.get_sample_value("citybrain_hj212_bad_frames_total", {"reason": "bad_crc"}) == 1
    writer.close()


async def test_split_message_is_forwarded_once_with_all_its_frames(server_factory) -> None:
    sink = MemorySink()
    srv, _ = await server_factory(sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    part1, part2 = upload(flag=7, pnum=2, pno=1), upload(flag=7, pnum=2, pno=2)
    writer.write(part2)  # out of order
    await writer.drain()
    writer.write(part1)
    await writer.drain()
    replies = await read_frames(reader, 2)
    assert [r.cn for r in replies] == ["9014", "9014"]
    # One message, both frames: had part 2 been forwarded on its own (before part 1 came),
    # it would be here as well; no waiting for something not to happen.
    (msg,) = sink.messages
    assert msg.payload == part1 + part2
    writer.close()


async def test_split_parts_answered_on_receipt_when_configured(server_factory) -> None:
    sink = MemorySink()
    srv, _ = await server_factory(sink, split_ack="on_receipt")
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(flag=7, pnum=2, pno=1))
    await writer.drain()
    (reply,) = await read_frames(reader, 1)
    assert reply.cn == "9014" and sink.messages == []
    writer.close()


async def test_idle_connections_are_closed(server_factory) -> None:
    srv, reg = await server_factory(MemorySink(), idle_timeout_s=0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    for _ in range(100):
        if reg.get_sample_value("citybrain_hj212_disconnects_total", {"reason": "idle"}) == 1:
            break
        await asyncio.sleep(0.01)
    assert reg.get_sample_value("citybrain_hj212_disconnects_total", {"reason": "idle"}) == 1


async def test_connection_limit(server_factory) -> None:
    srv, reg = await server_factory(MemorySink(), max_connections=1)
    _r1, w1 = await asyncio.open_connection("127.0.0.1", srv.port)
    w1.write(upload())
    await w1.drain()
    await read_frames(_r1, 1)
    r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
    async with asyncio.timeout(5):
        assert await r2.read() == b""
    assert reg.get_sample_value("citybrain_hj212_connections_total", {"result": "refused"}) == 1
    assert reg.get_sample_value("citybrain_hj212_connections_refused_total", {"reason": "max_connections"}) == 1
    w1.close()
    w2.close()


async def test_downlink_set_rtd_interval_and_set_time(server_factory) -> None:
    srv, reg = await server_factory(MemorySink())
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upload(flag=4))  # no answer wanted: just makes the station known
    await writer.drain()
    for _ in range(100):
        if srv.connected(MN):
            break
        await asyncio.sleep(0.01)

    async def station() -> list[Hj212Packet]:
        cmds = []
        for _ in range(2):
            (cmd,) = await read_frames(reader, 1)
            writer.write(reply_9011(cmd, 1) + reply_9012(cmd, 1))
            await writer.drain()
            cmds.append(cmd)
        return cmds

    task = asyncio.create_task(station())
    r1 = await srv.set_rtd_interval(MN, 30, timeout=5)
    r2 = await srv.set_time(MN, datetime(2024, 5, 15, 2, 30, tzinfo=UTC), timeout=5)
    cmds = await task
    assert r1.ok and r2.ok and r1.qn != r2.qn
    assert [c.cn for c in cmds] == ["1062", "1012"]
    assert cp_params(cmds[0]) == {"RtdInterval": "30"}
    assert cp_params(cmds[1]) == {"SystemTime": "20240515103000"}  # Asia/Shanghai local time
    assert {c.pw for c in cmds} == {"123456"} and {c.st for c in cmds} == {"22"}
    assert reg.get_sample_value("citybrain_hj212_commands_total", {"cn": "1062", "result": "ok"}) == 1

    # a refusal (QnRtn=2) ends the wait early; silence is a timeout
    task2 = asyncio.create_task(read_frames(reader, 1))
    pending = asyncio.create_task(srv.set_rtd_interval(MN, 60, timeout=5))
    (cmd,) = await task2
    writer.write(reply_9011(cmd, 2))
    await writer.drain()
    refused = await pending
    assert not refused.ok and refused.qn_rtn == 2
    with pytest.raises(CommandError) as info:
        await srv.set_rtd_interval(MN, 60, timeout=0.1)
    assert info.value.reason == "timeout"
    with pytest.raises(CommandError) as info:
        await srv.set_rtd_interval("UNKNOWN1", 60, timeout=0.1)
    assert info.value.reason == "offline"
    writer.close()


def test_mn_map_uses_the_mn_attribute_or_the_code() -> None:
    devs = [
        DeviceInfo(
            "35020603080000017", "air-station@1", "air", "350206", None, "active", {"mn": "010000A8900016F000169DC0"}
        ),
        DeviceInfo("35020603080000025", "air-station@1", "air", "350206", None, "active", {}),
    ]
    assert mn_map(devs) == {"010000A8900016F000169DC0": "35020603080000017", "35020603080000025": "35020603080000025"}
    assert auth_resolver(mn_map(devs))("35020603080000025") == DeviceAuth("35020603080000025", None, None)


async def _closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if await reader.read(4096) == b"":
                    return True
            except ConnectionError:
                return True


async def _until(reg: CollectorRegistry, name: str, labels: dict[str, str] | None, want: float) -> float | None:
    for _ in range(500):
        if reg.get_sample_value(name, labels or {}) == want:
            break
        await asyncio.sleep(0.01)
    return reg.get_sample_value(name, labels or {})


class FakeClock:
    """The server's monotonic clock, moved by the test: deadlines pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def clocked_server(sink: MemorySink, **cfg: object) -> tuple[Hj212Server, CollectorRegistry, FakeClock]:
    reg, clock = CollectorRegistry(), FakeClock()
    resolve = auth_resolver({MN: CODE}, {CODE: "123456"})
    srv = Hj212Server(Hj212ServerConfig(**cfg), sink, resolve, Hj212Metrics(reg), clock=clock)  # type: ignore[arg-type]
    await srv.start()
    return srv, reg, clock


@pytest.mark.parametrize("what", ["frame", "junk"])
async def test_a_frame_dribbled_past_the_deadline_closes_the_connection(what: str) -> None:
    """Issue 15 defect 10: the idle timer restarts on every byte; the frame deadline does not."""
    # Deadline and idle timeout far beyond the test's real duration: only the injected clock moves.
    srv, reg, clock = await clocked_server(MemorySink(), idle_timeout_s=600, frame_deadline_s=30)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        data = upload() if what == "frame" else b"x" * 200
        for i in range(3):  # bytes 10 s apart: each well inside the idle timeout, the frame still open
            writer.write(data[i : i + 1])
            await writer.drain()
            assert await _until(reg, "citybrain_hj212_received_bytes_total", None, i + 1) == i + 1
            clock.now += 10
        writer.write(data[3:4])  # 30 s after the first byte
        await writer.drain()
        assert await _closed(reader)
        assert await _until(reg, "citybrain_hj212_frame_deadline_total", None, 1) == 1
        assert reg.get_sample_value("citybrain_hj212_disconnects_total", {"reason": "frame_deadline"}) == 1
        assert reg.get_sample_value("citybrain_hj212_disconnects_total", {"reason": "idle"}) is None
        writer.close()
    finally:
        await srv.stop()


async def test_whole_frames_keep_a_connection_however_far_apart() -> None:
    sink = MemorySink()
    srv, reg, clock = await clocked_server(sink, idle_timeout_s=600, frame_deadline_s=30)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        for i in range(3):  # whole frames 100 s apart: the gaps are idle time, not frame time
            writer.write(upload(i=i))
            await writer.drain()
            assert [r.cn for r in await read_frames(reader, 1)] == ["9014"]
            clock.now += 100
        # Half a frame, then the rest 20 s later (inside the deadline): answered.
        frame = upload(i=9)
        writer.write(frame[:20])
        await writer.drain()
        received = 3 * len(frame) + 20  # the three frames were as long as this one
        assert await _until(reg, "citybrain_hj212_received_bytes_total", None, received) == received
        clock.now += 20
        writer.write(frame[20:])
        await writer.drain()
        assert [r.cn for r in await read_frames(reader, 1)] == ["9014"]
        assert reg.get_sample_value("citybrain_hj212_frame_deadline_total") == 0
        writer.close()
    finally:
        await srv.stop()


async def test_connections_per_source_address_are_capped(server_factory) -> None:
    srv, reg = await server_factory(MemorySink(), max_connections_per_address=2)
    held = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(2)]
    for r, w in held:  # both served
        w.write(upload())
        await w.drain()
        await read_frames(r, 1)
    r3, w3 = await asyncio.open_connection("127.0.0.1", srv.port)
    assert await _closed(r3)
    assert reg.get_sample_value("citybrain_hj212_connections_refused_total", {"reason": "per_address"}) == 1
    w3.close()
    # A slot freed by a close is free again.
    held[0][1].close()
    assert await _closed(held[0][0])
    assert await _until(reg, "citybrain_hj212_open_connections", None, 1) == 1
    r4, w4 = await asyncio.open_connection("127.0.0.1", srv.port)
    w4.write(upload(i=4))
    await w4.drain()
    assert [r.cn for r in await read_frames(r4, 1)] == ["9014"]
    for _, w in (held[1], (r4, w4)):
        w.close()
