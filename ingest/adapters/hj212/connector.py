"""HJ 212-2017 TCP connector: the server stations connect to, and the downlink to them.

Environmental stations (数采仪) open a TCP connection to the platform and send
HJ 212 frames; the platform answers on the same connection and sends its
commands down it. Per connection::

    socket ──read──▶ FrameDecoder (split/coalesced frames, CRC) ──▶ parse_segment
      ──▶ MN → device (resolver) ──▶ PW check ──▶ PNUM/PNO reassembly
      ──▶ sink.submit(RawMessage)  (waits when the sink is full: TCP backpressure)
      ──▶ ack queue ──▶ after the Kafka ack: reply 9014 when Flag asked for one

Guarantee: at least once. A data upload is answered (9014) only after Kafka
acknowledged it; a station that gets no answer resends (HJ 212-2017 CN 1000
timeout/retries). A split message is forwarded as one raw message whose
payload is its frames concatenated in PNO order; with the default
``split_ack="on_complete"`` every part is answered after that message's Kafka ack.
Stations that wait for each part's answer before sending the next need
``split_ack="on_receipt"``: earlier parts are then answered on receipt, which
loses the message if the connector dies before the last part arrives.

Device identity: the station's MN is resolved through a callable passed in
(:data:`Resolver`), in production :meth:`StationDirectory.resolve` of the
directory the edge refreshes from the ledger in place. The ledger convention is
that a device's attribute ``mn`` holds its MN, and a device without one uses its
17-character city code as MN (see :func:`mn_map`). An unknown MN is answered
9011 QnRtn=4 (MN错误).

Slow and greedy clients: a frame must be complete ``frame_deadline_s`` after its
first byte (the idle timer restarts on every byte, so alone it never closes a
client dribbling a byte a second), and one source address may hold at most
``max_connections_per_address`` connections; both are counted
(``citybrain_hj212_frame_deadline_total``,
``citybrain_hj212_connections_refused_total{reason}``).

PW check (``check_pw``, on by default): the station's PW is provisioned like a
credential and stored only as a scrypt hash (``devices.hj212_pw_hash``, see
:mod:`ingest.adapters.hj212.passwords`). It is verified once per connection
and MN: the verified (MN, PW, hash) triple is remembered on the connection, so
scrypt does not run per frame, and a rotated hash is verified afresh. scrypt
runs in a small thread pool of its own, never on the event loop; the
connection's own frames wait for it (which keeps their order), the others do
not. A wrong PW, or a device with no PW provisioned, is answered 9011 QnRtn=3
(PW错误), counted (``citybrain_hj212_auth_failures_total{reason}``), logged
once per connection and MN, and *refused*: not forwarded and not dead-lettered,
because the frame comes from an unauthenticated sender (dead-lettering would
let anyone fill Kafka, and would store the PW guess). After ``max_pw_failures``
distinct wrong PWs a connection is closed, which bounds the scrypt work a
guesser can cause per connection. Station answers (9011/9012 to commands) are
accepted only on the connection the command went down, from a station that
authenticated on it.

Payload bytes: the forwarded frame is re-framed from the CRC-checked segment,
so it is the wire frame except that the CRC digits are upper case.

Downlink: :meth:`Hj212Server.set_rtd_interval` (CN 1062) and
:meth:`Hj212Server.set_time` (CN 1012) write a command to the station's live
connection and wait for its 9011 (QnRtn) and 9012 (ExeRtn) answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.records import RawMessage, Transport
from devices.credentials import verify_secret
from ingest.adapters.hj212.codec import (
    CN_DATA_ACK,
    CN_EXECUTE_RESULT,
    CN_REQUEST_REPLY,
    FrameDecoder,
    Hj212Packet,
    Reassembler,
    command_set_rtd_interval,
    command_set_time,
    cp_params,
    frame,
    make_qn,
    parse_segment,
    reply_9011,
    reply_9014,
)
from ingest.adapters.hj212.directory import DeviceAuth, Resolver, StationDirectory, auth_resolver, mn_map
from ingest.errors import CommandError, DecodeError, IngestError
from ingest.kafka_sink import RawSink

__all__ = [
    "CommandReply",
    "DeviceAuth",
    "Hj212Metrics",
    "Hj212Server",
    "Hj212ServerConfig",
    "Resolver",
    "StationDirectory",
    "auth_resolver",
    "mn_map",
]

log = logging.getLogger(__name__)

#: QnRtn codes used here (HJ 212-2017; docs/standards.md §2.4).
QN_RTN_READY = 1
QN_RTN_BAD_PW = 3
QN_RTN_BAD_MN = 4
#: ExeRtn 1 执行成功.
EXE_RTN_OK = 1
_CN_NOTICE_REPLY = "9013"
_REPLY_CNS = frozenset({CN_REQUEST_REPLY, CN_EXECUTE_RESULT, _CN_NOTICE_REPLY, CN_DATA_ACK})


@dataclass(frozen=True, slots=True)
class Hj212ServerConfig:
    """Typed connector settings.

    Attributes:
        host: Bind address.
        port: TCP port (0: a free port, see :attr:`Hj212Server.port`).
        max_connections: Concurrent connections, at most; more are closed at once.
        max_connections_per_address: Concurrent connections from one source address
            (IP), at most (0: no limit); more are closed at once. A data concentrator
            needs one or a few; this bounds what one host can hold open.
        idle_timeout_s: A connection silent this long is closed (stations send at least
            every few minutes; a dead NAT path would otherwise hold the socket forever).
        frame_deadline_s: A frame must be complete this long after its first byte
            arrived, or the connection is closed. The idle timer alone restarts on every
            byte, so a client dribbling one byte a second would never be closed by it.
        read_size: Bytes per socket read.
        max_buffer: Framer buffer bound (one maximal frame is 1036 bytes).
        max_parts: PNUM above this is rejected (``too_large``): bounds a merged message.
        max_pending_splits: Incomplete split messages kept per connection.
        split_ttl_s: Age after which an incomplete split message is dropped.
        max_unacked: Messages per connection waiting for the Kafka ack; reading pauses beyond.
        split_ack: When the parts of a split message are answered (see the module docstring).
        default_tz: Zone of ``SystemTime`` in CN 1012 (device-local time).
        check_pw: Check the frame's PW against the device's (see the module docstring);
            off, any PW is accepted (migration periods only).
        max_pw_failures: Distinct wrong PWs on one connection before it is closed.
        pw_verify_workers: Threads for scrypt checks (shared by all connections).
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_connections: int = 20000
    max_connections_per_address: int = 32
    idle_timeout_s: float = 600.0
    frame_deadline_s: float = 30.0
    read_size: int = 4096
    max_buffer: int = 8192
    max_parts: int = 64
    max_pending_splits: int = 16
    split_ttl_s: float = 120.0
    max_unacked: int = 64
    split_ack: Literal["on_complete", "on_receipt"] = "on_complete"
    default_tz: tzinfo = field(default=ZoneInfo("Asia/Shanghai"))
    check_pw: bool = True
    max_pw_failures: int = 5
    pw_verify_workers: int = 2


class Hj212Metrics:
    """The connector's metrics, registered on the registry passed in.

    Packets per second is ``rate(citybrain_hj212_frames_total[1m])``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge("citybrain_hj212_open_connections", "Open station connections", registry=registry)
        self.accepted = Counter(
            "citybrain_hj212_connections_total", "Connections by result", ["result"], registry=registry
        )
        self.disconnects = Counter(
            "citybrain_hj212_disconnects_total", "Closed connections by reason", ["reason"], registry=registry
        )
        self.refused = Counter(
            "citybrain_hj212_connections_refused_total",
            "Connections closed at once, by reason (max_connections, per_address)",
            ["reason"],
            registry=registry,
        )
        self.frame_deadline = Counter(
            "citybrain_hj212_frame_deadline_total",
            "Connections closed because a frame was not complete within the frame deadline",
            registry=registry,
        )
        self.known_stations = Gauge(
            "citybrain_hj212_known_stations", "MNs the station directory resolves", registry=registry
        )
        self.stations_with_pw = Gauge(
            "citybrain_hj212_stations_with_pw", "Known stations with a PW provisioned", registry=registry
        )
        self.directory_refreshes = Counter(
            "citybrain_hj212_directory_refreshes_total",
            "Reloads of station MNs and PW hashes from the ledger, by result",
            ["result"],
            registry=registry,
        )
        self.bytes = Counter("citybrain_hj212_received_bytes_total", "Bytes read from stations", registry=registry)
        self.frames = Counter(
            "citybrain_hj212_frames_total", "Well-formed frames received", ["kind"], registry=registry
        )
        self.bad_frames = Counter(
            "citybrain_hj212_bad_frames_total", "Frames rejected by reason", ["reason"], registry=registry
        )
        self.auth_failures = Counter(
            "citybrain_hj212_auth_failures_total", "Frames refused by MN/PW check", ["reason"], registry=registry
        )
        self.forwarded = Counter(
            "citybrain_hj212_messages_forwarded_total", "Messages acknowledged by the sink", registry=registry
        )
        self.splits_dropped = Counter(
            "citybrain_hj212_split_messages_dropped_total",
            "Incomplete split messages dropped",
            ["reason"],
            registry=registry,
        )
        self.ack_lag = Histogram(
            "citybrain_hj212_ack_lag_seconds",
            "From the last frame of a message to its answer (Kafka ack included)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.commands = Counter(
            "citybrain_hj212_commands_total", "Downlink commands by CN and result", ["cn", "result"], registry=registry
        )


@dataclass(frozen=True, slots=True)
class CommandReply:
    """A station's answers to a command.

    Attributes:
        qn: The command's request id.
        qn_rtn: QnRtn of the 9011 answer (1 ready), or ``None`` if the station skipped 9011.
        exe_rtn: ExeRtn of the 9012 answer (1 success), or ``None`` if the request was refused.
    """

    qn: str
    qn_rtn: int | None
    exe_rtn: int | None

    @property
    def ok(self) -> bool:
        """The station executed the command successfully."""
        return self.exe_rtn == EXE_RTN_OK and self.qn_rtn in (None, QN_RTN_READY)


@dataclass(slots=True)
class _Waiter:
    done: asyncio.Future[CommandReply]
    qn_rtn: int | None = None


@dataclass(slots=True)
class _Partial:
    first_seen: float
    frames: dict[int, bytes] = field(default_factory=dict)
    acks: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _Station:
    conn: _Connection
    st: str
    pw: str
    code: str


def _address(writer: asyncio.StreamWriter) -> str:
    """The peer's host (IP) without the port: what the per-address limit counts."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: Hj212ServerConfig) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.framer = FrameDecoder(cfg.max_buffer)
        self.reassembler = Reassembler(max_pending=cfg.max_pending_splits, ttl_seconds=cfg.split_ttl_s)
        self.partials: dict[tuple[str, str, str], _Partial] = {}
        self.acks: asyncio.Queue[tuple[asyncio.Future[None], list[bytes], float]] = asyncio.Queue(cfg.max_unacked)
        self.mns: set[str] = set()
        # PW checks already done on this connection: (MN, PW, hash) → verdict. A new
        # hash (rotation) or another PW is a new key, so it is verified afresh.
        self.pw_checked: dict[tuple[str, str, str], bool] = {}
        self.pw_failures = 0
        self.address = ""

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class Hj212Server:
    """Asyncio TCP server for many concurrent HJ 212 stations.

    Args:
        config: Settings.
        sink: Where accepted messages go (e.g. :class:`ingest.kafka_sink.KafkaSink`).
        resolve: MN → :class:`DeviceAuth` or ``None``.
        metrics: Metrics.
        clock: Monotonic clock in seconds (split-message ages, frame deadlines).
    """

    def __init__(
        self,
        config: Hj212ServerConfig,
        sink: RawSink,
        resolve: Resolver,
        metrics: Hj212Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = config
        self._sink = sink
        self._resolve = resolve
        self._metrics = metrics
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stations: dict[str, _Station] = {}
        self._waiters: dict[tuple[str, str], _Waiter] = {}
        self._last_qn_ms = 0
        self._pw_executor: ThreadPoolExecutor | None = None
        self._per_address: dict[str, int] = {}
        self._refusals_logged: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port``."""
        self._server = await asyncio.start_server(self._accept, self.cfg.host, self.cfg.port)
        log.info("HJ 212 server listening on %s:%d", self.cfg.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise IngestError("HJ 212 server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection; unanswered messages are resent by stations."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for waiter in self._waiters.values():
            if not waiter.done.done():
                waiter.done.set_exception(CommandError("offline", "connector stopped"))
        if self._pw_executor is not None:
            self._pw_executor.shutdown(wait=False, cancel_futures=True)
            self._pw_executor = None

    def connected(self, mn: str) -> bool:
        """Whether a station with this MN has an open connection."""
        return mn in self._stations

    @property
    def connection_count(self) -> int:
        """Open connections."""
        return len(self._connections)

    # -- per connection ------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        refusal = None
        address = _address(writer)
        if len(self._connections) >= self.cfg.max_connections:
            refusal = "max_connections"
        elif 0 < self.cfg.max_connections_per_address <= self._per_address.get(address, 0):
            refusal = "per_address"
        if refusal is not None:
            self._metrics.accepted.labels("refused").inc()
            self._metrics.refused.labels(refusal).inc()
            if refusal not in self._refusals_logged:
                self._refusals_logged.add(refusal)
                log.warning("HJ 212 connection from %s refused (%s); further refusals only counted", address, refusal)
            writer.close()
            return
        conn = _Connection(reader, writer, self.cfg)
        conn.address = address
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self._connections.add(conn)
        self._tasks.add(task)
        self._metrics.accepted.labels("accepted").inc()
        self._metrics.connections.set(len(self._connections))
        acker = asyncio.create_task(self._ack_loop(conn), name=f"hj212-ack-{conn.peer}")
        reason = "eof"
        try:
            reason = await self._read_loop(conn)
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except (ConnectionError, OSError) as exc:
            reason = "error"
            log.info("HJ 212 connection %s failed: %s", conn.peer, exc)
        finally:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await acker
            self._forget(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._metrics.disconnects.labels(reason).inc()
            self._tasks.discard(task)
            log.info("HJ 212 connection %s closed (%s)", conn.peer, reason)

    def _forget(self, conn: _Connection) -> None:
        if conn in self._connections:
            left = self._per_address.get(conn.address, 1) - 1
            if left > 0:
                self._per_address[conn.address] = left
            else:
                self._per_address.pop(conn.address, None)
        self._connections.discard(conn)
        self._metrics.connections.set(len(self._connections))
        for mn in conn.mns:
            station = self._stations.get(mn)
            if station is not None and station.conn is conn:
                del self._stations[mn]

    async def _read_loop(self, conn: _Connection) -> str:
        # ``frame_started``: when the first byte not yet part of a complete frame arrived
        # (None: nothing outstanding). Only a complete frame ends it; garbage does not,
        # so neither a dribbled frame nor dribbled junk outlives the frame deadline.
        frame_started: float | None = None
        while True:
            timeout = self.cfg.idle_timeout_s
            # Which timer is waited on is decided here, not re-judged after the wait: the
            # loop's timer may fire a little early, and a frame cut short is never "idle".
            frame_due = False
            if frame_started is not None:
                left = frame_started + self.cfg.frame_deadline_s - self._clock()
                if left < timeout:
                    timeout, frame_due = left, True
            try:
                if timeout <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(conn.reader.read(self.cfg.read_size), timeout)
            except TimeoutError:
                if frame_due:
                    self._metrics.frame_deadline.inc()
                    log.warning(
                        "HJ 212 %s: frame not complete %.1fs after its first byte; closing",
                        conn.peer,
                        self.cfg.frame_deadline_s,
                    )
                    return "frame_deadline"
                return "idle"
            if not data:
                return "eof"
            if frame_started is None:
                frame_started = self._clock()
            self._metrics.bytes.inc(len(data))
            completed = False
            for item in conn.framer.feed(data):
                if isinstance(item, DecodeError):
                    completed = completed or item.reason == "bad_crc"  # a whole frame, if a broken one
                    self._bad(conn, item)
                    continue
                completed = True
                try:
                    packet = parse_segment(item)
                except DecodeError as exc:
                    self._bad(conn, exc)
                    continue
                await self._on_packet(conn, item, packet)
                if conn.pw_failures >= self.cfg.max_pw_failures:
                    return "auth"
            if completed:
                # What is left in the framer is the start of the next frame, which arrived now.
                frame_started = self._clock() if conn.framer.pending_bytes else None

    def _bad(self, conn: _Connection, exc: DecodeError) -> None:
        self._metrics.bad_frames.labels(exc.reason).inc()
        log.warning("HJ 212 bad frame from %s: %s", conn.peer, exc)

    async def _on_packet(self, conn: _Connection, segment: bytes, packet: Hj212Packet) -> None:
        if packet.cn in _REPLY_CNS:
            self._metrics.frames.labels("reply").inc()
            station = self._stations.get(packet.mn)
            # Only the connection the command went down may answer it: a reply from
            # any other socket could fake a command's success.
            if station is not None and station.conn is conn:
                self._on_reply(packet)
            return
        self._metrics.frames.labels("upload").inc()
        auth = self._resolve(packet.mn)
        if auth is None:
            self._metrics.auth_failures.labels("unknown_mn").inc()
            log.warning("HJ 212 unknown MN %s from %s (CN %s)", packet.mn, conn.peer, packet.cn)
            conn.send(reply_9011(packet, QN_RTN_BAD_MN))
            return
        if self.cfg.check_pw and not await self._pw_ok(conn, packet, auth):
            conn.send(reply_9011(packet, QN_RTN_BAD_PW))
            return
        conn.mns.add(packet.mn)
        self._stations[packet.mn] = _Station(conn, packet.st, packet.pw, auth.code)
        wire = frame(segment.decode("ascii"))
        if packet.is_split:
            assembled = self._on_part(conn, packet, wire)
            if assembled is None:
                return
            payload, replies = assembled
        else:
            payload = wire
            replies = [reply_9014(packet)] if packet.needs_ack else []
        raw = RawMessage(
            topic=f"hj212/{conn.peer}",
            payload=payload,
            received_at=datetime.now(UTC),
            transport=Transport.HJ212,
            device_code=auth.code,
            meta=(("mn", packet.mn), ("st", packet.st), ("cn", packet.cn)),
        )
        future = await self._sink.submit(raw)
        await conn.acks.put((future, replies, time.monotonic()))

    async def _pw_ok(self, conn: _Connection, packet: Hj212Packet, auth: DeviceAuth) -> bool:
        """Whether the frame's PW is the device's; counts and logs a refusal (never the PW itself).

        Each (MN, PW, expected) is decided once per connection: a station resending
        with the same PW costs no scrypt and no log line, only the count.
        """
        if auth.pw_hash is None and auth.password is None:
            self._metrics.auth_failures.labels("no_pw").inc()
            if (packet.mn, "", "") not in conn.pw_checked:
                conn.pw_checked[(packet.mn, "", "")] = False
                log.warning(
                    "HJ 212 MN %s (device %s) from %s refused: no PW provisioned "
                    "(citybrain devices credentials rotate %s --hj212)",
                    packet.mn,
                    auth.code,
                    conn.peer,
                    auth.code,
                )
            return False
        expected = auth.pw_hash if auth.pw_hash is not None else f"plain:{auth.password}"
        key = (packet.mn, packet.pw, expected)
        ok = conn.pw_checked.get(key)
        if ok is None:
            if auth.pw_hash is not None:
                if self._pw_executor is None:
                    self._pw_executor = ThreadPoolExecutor(self.cfg.pw_verify_workers, thread_name_prefix="hj212-pw")
                loop = asyncio.get_running_loop()
                ok = bool(await loop.run_in_executor(self._pw_executor, verify_secret, packet.pw, auth.pw_hash))
            else:
                assert auth.password is not None
                ok = hmac.compare_digest(packet.pw.encode(), auth.password.encode())
            if len(conn.pw_checked) >= 64:  # a data concentrator has a few MNs, not more
                conn.pw_checked.clear()
            conn.pw_checked[key] = ok
            if not ok:
                conn.pw_failures += 1
                log.warning("HJ 212 wrong PW for MN %s (device %s) from %s", packet.mn, auth.code, conn.peer)
        if not ok:
            self._metrics.auth_failures.labels("bad_pw").inc()
        return ok

    def _on_part(self, conn: _Connection, packet: Hj212Packet, wire: bytes) -> tuple[bytes, list[bytes]] | None:
        assert packet.pnum is not None and packet.pno is not None
        if packet.pnum > self.cfg.max_parts:
            self._metrics.bad_frames.labels("too_large").inc()
            log.warning("HJ 212 MN %s from %s: PNUM %d > %d", packet.mn, conn.peer, packet.pnum, self.cfg.max_parts)
            return None
        now = self._clock()
        # Mirror the Reassembler's bookkeeping (same ttl, clock and oldest-first eviction),
        # keeping the original frames it does not hold.
        dropped_before = conn.reassembler.dropped
        if conn.reassembler.expire(now):
            stale = [k for k, p in conn.partials.items() if now - p.first_seen > self.cfg.split_ttl_s]
            for k in stale:
                del conn.partials[k]
            self._metrics.splits_dropped.labels("expired").inc(len(stale))
        key = (packet.mn, packet.qn, packet.cn)
        try:
            merged = conn.reassembler.add(packet, now)
        except DecodeError as exc:
            conn.partials.pop(key, None)
            self._metrics.splits_dropped.labels(exc.reason).inc()
            self._bad(conn, exc)
            return None
        if conn.reassembler.dropped != dropped_before:
            oldest = next(iter(conn.partials))
            del conn.partials[oldest]
            self._metrics.splits_dropped.labels("evicted").inc()
        partial = conn.partials.setdefault(key, _Partial(first_seen=now))
        partial.frames[packet.pno] = wire
        ack = reply_9014(packet) if packet.needs_ack else None
        if merged is None:
            if ack is not None:
                if self.cfg.split_ack == "on_receipt":
                    conn.send(ack)
                else:
                    partial.acks[packet.pno] = ack
            return None
        del conn.partials[key]
        if ack is not None:
            partial.acks[packet.pno] = ack
        payload = b"".join(partial.frames[n] for n in range(1, packet.pnum + 1))
        return payload, [partial.acks[n] for n in sorted(partial.acks)]

    async def _ack_loop(self, conn: _Connection) -> None:
        while True:
            future, replies, t0 = await conn.acks.get()
            try:
                await future
            except IngestError as exc:
                # The sink stopped: do not answer, the station will resend to the next connector.
                log.warning("HJ 212 %s: message not stored (%s); closing", conn.peer, exc)
                conn.writer.close()
                return
            for reply in replies:
                conn.send(reply)
            if replies:
                await conn.writer.drain()
            self._metrics.forwarded.inc()
            self._metrics.ack_lag.observe(time.monotonic() - t0)

    # -- downlink ----------------------------------------------------------------------

    def _on_reply(self, packet: Hj212Packet) -> None:
        waiter = self._waiters.get((packet.mn, packet.qn))
        if waiter is None or waiter.done.done():
            return
        params = cp_params(packet)
        try:
            if packet.cn == CN_REQUEST_REPLY:
                waiter.qn_rtn = int(params.get("QnRtn", ""))
                if waiter.qn_rtn != QN_RTN_READY:
                    waiter.done.set_result(CommandReply(packet.qn, waiter.qn_rtn, None))
            elif packet.cn == CN_EXECUTE_RESULT:
                waiter.done.set_result(CommandReply(packet.qn, waiter.qn_rtn, int(params.get("ExeRtn", ""))))
        except ValueError:
            log.warning("HJ 212 MN %s: unreadable answer to QN %s: %s", packet.mn, packet.qn, params)

    def _next_qn(self, tz: tzinfo) -> str:
        # QN is a millisecond timestamp; keep it strictly increasing so two commands
        # in the same millisecond still get distinct ids.
        now_ms = time.time_ns() // 1_000_000
        self._last_qn_ms = max(now_ms, self._last_qn_ms + 1)
        when = datetime.fromtimestamp(self._last_qn_ms / 1000, tz=UTC).astimezone(tz)
        return make_qn(when)

    async def send_command(
        self, mn: str, build: Callable[[str, str, str], bytes], *, cn: str, timeout: float = 30.0
    ) -> CommandReply:
        """Send a command frame to a connected station and wait for its answers.

        Args:
            mn: The station's MN.
            build: ``(qn, pw, st) -> frame``; PW and ST are the station's, as last seen.
            cn: The command's CN (metric label).
            timeout: Seconds to wait for the 9012 answer (or a refusing 9011).

        Returns:
            The station's answers; check :attr:`CommandReply.ok`.

        Raises:
            CommandError: ``offline`` (no connection for this MN) or ``timeout``.
        """
        station = self._stations.get(mn)
        if station is None:
            self._metrics.commands.labels(cn, "offline").inc()
            raise CommandError("offline", f"no HJ 212 connection for MN {mn}")
        qn = self._next_qn(self.cfg.default_tz)
        data = build(qn, station.pw, station.st)
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._waiters[(mn, qn)] = waiter
        try:
            station.conn.send(data)
            await station.conn.writer.drain()
            async with asyncio.timeout(timeout):
                reply = await waiter.done
        except TimeoutError:
            self._metrics.commands.labels(cn, "timeout").inc()
            raise CommandError("timeout", f"MN {mn} did not answer QN {qn} within {timeout}s") from None
        except (ConnectionError, OSError) as exc:
            self._metrics.commands.labels(cn, "offline").inc()
            raise CommandError("offline", f"MN {mn}: {exc}") from exc
        finally:
            del self._waiters[(mn, qn)]
        self._metrics.commands.labels(cn, "ok" if reply.ok else "failed").inc()
        log.info("HJ 212 command CN %s to MN %s (device %s): %s", cn, mn, station.code, reply)
        return reply

    async def set_rtd_interval(self, mn: str, seconds: int, *, timeout: float = 30.0) -> CommandReply:
        """CN 1062 设置实时数据间隔.

        Args:
            mn: The station's MN.
            seconds: New real-time interval.
            timeout: Seconds to wait for the answers.

        Returns:
            The station's answers.

        Raises:
            CommandError: ``offline`` or ``timeout``.
            ValueError: ``seconds`` is not positive.
        """
        if seconds <= 0:
            raise ValueError("seconds must be positive")

        def build(qn: str, pw: str, st: str) -> bytes:
            return command_set_rtd_interval(mn, pw, seconds, qn=qn, st=st)

        return await self.send_command(mn, build, cn="1062", timeout=timeout)

    async def set_time(self, mn: str, when: datetime | None = None, *, timeout: float = 30.0) -> CommandReply:
        """CN 1012 设置现场机时间 (``SystemTime`` in the station's local zone).

        Args:
            mn: The station's MN.
            when: The time to set (aware); now when omitted.
            timeout: Seconds to wait for the answers.

        Returns:
            The station's answers.

        Raises:
            CommandError: ``offline`` or ``timeout``.
        """
        at = when or datetime.now(UTC)
        tz = self.cfg.default_tz

        def build(qn: str, pw: str, st: str) -> bytes:
            return command_set_time(mn, pw, at, tz, qn=qn, st=st)

        return await self.send_command(mn, build, cn="1012", timeout=timeout)
