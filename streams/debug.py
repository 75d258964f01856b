"""What the per-device debug view reads: recent raw messages and dead letters, in PostgreSQL.

Small tables, cheap on the hot path and indexed by device, so the API answers
one device from an index instead of scanning Kafka:

* ``device_recent_messages``: a ring of the last :data:`RING` raw payloads per
  captured device (slot = position in the ring), with what normalisation made of
  each (decoded readings, or the reject reason). The worker writes one row per
  captured device per batch, the device's newest message in it; the table never
  grows beyond ``RING`` rows per device, so it needs no retention job.
* ``debug_captures``: which devices are captured, and until when (:class:`Capture`).
  Capture is on demand by default, as in EMQX's traces and ThingsBoard's debug
  mode: opening a device's debug view captures it for :data:`VIEW_CAPTURE`, and
  registering a device through the API captures its bring-up day
  (:data:`ONBOARD_CAPTURE`). Writing every device's newest message on every batch
  cost a tenth of a worker's CPU and a fifth of PostgreSQL's at city scale
  (docs/benchmarks.md), for a view an integrator opens for a handful of devices.
* ``dead_letters``: the ``citybrain.deadletter`` topic (gateway, HJ 212 server,
  webhook and stream worker rejects alike) copied by a consumer, keyed by Kafka
  (partition, offset) so a re-read inserts nothing twice, and pruned after
  ``retention_days``. Dead letters are rare by design, so a row each is cheap;
  reading them from Kafka by device would mean scanning the whole topic (its key is
  the MQTT topic, and it has one partition) on every request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import psycopg

from core.jsonio import dumps_text
from core.records import RawMessage, Reading
from core.topics import TopicError, parse_uplink

__all__ = [
    "MAX_PAYLOAD",
    "ONBOARD_CAPTURE",
    "RING",
    "VIEW_CAPTURE",
    "Capture",
    "CaptureSet",
    "DeadLetter",
    "capture_until",
    "device_of",
    "payload_text",
    "prune_captures",
    "prune_dead_letters",
    "record_dead_letters",
    "record_recent",
    "start_capture",
]

log = logging.getLogger(__name__)

#: Raw messages kept per device.
RING = 20
#: Payload bytes kept per message / dead letter (the view is for reading, not for replay).
MAX_PAYLOAD = 4096
#: Opening (or refreshing) a device's debug view captures its raw messages this long.
VIEW_CAPTURE = timedelta(minutes=30)
#: A device registered through the API is captured this long: its bring-up day.
ONBOARD_CAPTURE = timedelta(hours=24)
#: Expired captures are deleted this long after they end (maintenance).
_CAPTURE_KEPT = timedelta(days=1)


class Capture(StrEnum):
    """Which devices' raw messages the worker keeps in the ring (``CITYBRAIN_DEBUG_CAPTURE``)."""

    #: Devices with a current row in ``debug_captures`` (debug view opened, or just registered).
    ON_DEMAND = "on_demand"
    #: Every device, every batch (a small fleet; costs a write per device and batch).
    ALL = "all"
    #: None: the debug view shows dead letters and the session only.
    OFF = "off"


class CaptureSet:
    """The devices a worker captures, re-read from ``debug_captures`` at most every ``refresh_s``.

    The table holds a handful of rows (devices someone is debugging), so the
    re-read is one small indexed query; a capture started in the API is picked up
    within ``refresh_s``.
    """

    def __init__(self, mode: Capture, refresh_s: float = 2.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._codes: frozenset[str] = frozenset()
        self._loaded = -float("inf")

    @property
    def codes(self) -> frozenset[str]:
        """The captured devices as last read (``on_demand`` only)."""
        return self._codes

    def stale(self) -> bool:
        """Whether :meth:`refresh` would read the table (``on_demand`` and older than ``refresh_s``)."""
        return self.mode is Capture.ON_DEMAND and self._monotonic() - self._loaded >= self.refresh_s

    async def refresh(self, conn: psycopg.AsyncConnection, now: datetime) -> None:
        """Re-read the current captures (a no-op unless :meth:`stale`)."""
        if not self.stale():
            return
        cur = await conn.execute("select code from debug_captures where until > %s", (now,))
        self._codes = frozenset(code for (code,) in await cur.fetchall())
        self._loaded = self._monotonic()

    def select(self, messages: Sequence[RawMessage]) -> list[RawMessage]:
        """The messages of captured devices."""
        if self.mode is Capture.ALL:
            return list(messages)
        if self.mode is Capture.OFF or not self._codes:
            return []
        codes = self._codes
        return [m for m in messages if device_of(m) in codes]


async def start_capture(
    conn: psycopg.AsyncConnection, codes: Sequence[str], until: datetime, by: str
) -> dict[str, datetime]:
    """Capture the devices' raw messages until ``until`` (a later capture already there is kept).

    Returns:
        Each device's capture end after the call.
    """
    cur = await conn.execute(
        "insert into debug_captures (code, until, started_by)"
        " select c, %s, %s from unnest(%s::text[]) as c"
        " on conflict (code) do update set until = greatest(debug_captures.until, excluded.until),"
        " started_by = case when excluded.until > debug_captures.until then excluded.started_by"
        " else debug_captures.started_by end"
        " returning code, until",
        (until, by, list(codes)),
    )
    return dict(await cur.fetchall())


async def capture_until(conn: psycopg.AsyncConnection, code: str) -> datetime | None:
    """When the device's capture ends (None: never captured, or deleted since)."""
    cur = await conn.execute("select until from debug_captures where code = %s", (code,))
    row = await cur.fetchone()
    return row[0] if row else None


async def prune_captures(conn: psycopg.AsyncConnection, now: datetime) -> int:
    """Delete captures that ended over a day ago; returns how many went."""
    cur = await conn.execute("delete from debug_captures where until < %s", (now - _CAPTURE_KEPT,))
    return cur.rowcount


def device_of(msg: RawMessage | None = None, topic: str | None = None) -> str | None:
    """The device a raw message or an MQTT topic names, if any."""
    if msg is not None and msg.device_code:
        return msg.device_code
    t = topic if topic is not None else (msg.topic if msg is not None else None)
    if not t:
        return None
    try:
        return parse_uplink(t).device_code
    except TopicError:
        return None


def _readings_doc(readings: Iterable[Reading]) -> list[dict[str, object]]:
    return [
        {
            "metric": r.metric,
            "value": r.value,
            "unit": r.unit,
            "quality": r.quality.value,
            "flag": r.flag,
            "event_time": r.event_time.isoformat().replace("+00:00", "Z"),
        }
        for r in readings
    ]


async def record_recent(
    conn: psycopg.AsyncConnection,
    messages: Sequence[RawMessage],
    readings: Iterable[Reading],
    rejects: Iterable[tuple[RawMessage, str, str]],
) -> int:
    """Put each device's newest message of a batch into its ring, with its outcome.

    Args:
        conn: A connection (autocommit or in the caller's transaction).
        messages: The batch's raw messages.
        readings: The batch's accepted readings.
        rejects: ``(message, reason, detail)`` of the batch's rejects.

    Returns:
        Rows written.
    """
    newest: dict[str, RawMessage] = {}
    for m in messages:
        code = device_of(m)
        if code is not None and (code not in newest or m.received_at >= newest[code].received_at):
            newest[code] = m
    if not newest:
        return 0
    by_msg: dict[tuple[str, datetime], list[Reading]] = {}
    for r in readings:
        by_msg.setdefault((r.device_code, r.received_at), []).append(r)
    rejected = {id(m): (reason, detail) for m, reason, detail in rejects}
    codes = sorted(newest)
    msgs = [newest[c] for c in codes]
    outcome = [rejected.get(id(m), (None, None)) for m in msgs]
    rows = (
        codes,
        [m.received_at for m in msgs],
        [m.topic for m in msgs],
        [m.transport.value for m in msgs],
        [m.payload[:MAX_PAYLOAD] for m in msgs],
        [dumps_text(_readings_doc(by_msg.get((c, m.received_at), []))) for c, m in zip(codes, msgs, strict=True)],
        [o[0] for o in outcome],
        [o[1] for o in outcome],
    )
    # One statement over arrays (a city batch has a device per message). The next slot is
    # one after the device's newest one; a device's first message takes slot 0.
    await conn.execute(
        "insert into device_recent_messages (code, slot, received_at, topic, transport, payload, readings,"
        " reject_reason, reject_detail)"
        " select u.c, coalesce((select (d.slot + 1) %% " + str(RING) + " from device_recent_messages d"
        " where d.code = u.c order by d.received_at desc limit 1), 0), u.rx, u.topic, u.transport, u.payload,"
        " u.readings::json, u.reason, u.detail"
        " from unnest(%b::text[], %b::timestamptz[], %b::text[], %b::text[], %b::bytea[], %b::text[],"
        " %b::text[], %b::text[]) as u(c, rx, topic, transport, payload, readings, reason, detail)"
        " on conflict (code, slot) do update set received_at = excluded.received_at, topic = excluded.topic,"
        " transport = excluded.transport, payload = excluded.payload, readings = excluded.readings,"
        " reject_reason = excluded.reject_reason, reject_detail = excluded.reject_detail",
        rows,
    )
    return len(codes)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One ``citybrain.deadletter`` record (value = the original payload, reason in headers)."""

    topic: str
    partition: int
    offset: int
    payload: bytes
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        """A header as text ('' if absent)."""
        for k, v in self.headers:
            if k == name:
                return v.decode(errors="replace")
        return ""


def _received_at(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def record_dead_letters(conn: psycopg.AsyncConnection, records: Sequence[DeadLetter]) -> int:
    """Copy dead-letter records into ``dead_letters`` (idempotent on partition and offset).

    Returns:
        Rows new in the table.
    """
    rows = []
    for rec in records:
        topic = rec.header("topic")
        rows.append(
            (
                rec.topic,
                rec.partition,
                rec.offset,
                device_of(topic=topic),
                rec.header("reason") or "unknown",
                rec.header("detail"),
                rec.header("source"),
                topic,
                _received_at(rec.header("received_at")),
                rec.payload[:MAX_PAYLOAD],
                len(rec.payload),
            )
        )
    if not rows:
        return 0
    new = 0
    async with conn.cursor() as cur:
        for row in rows:
            await cur.execute(
                "insert into dead_letters (kafka_topic, kafka_partition, kafka_offset, device_code, reason, detail,"
                " source, topic, received_at, payload, payload_size) values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " on conflict do nothing returning kafka_offset",
                row,
            )
            new += (await cur.fetchone()) is not None
    return new


async def prune_dead_letters(conn: psycopg.AsyncConnection, now: datetime, retention_days: int) -> int:
    """Delete dead letters older than ``retention_days``; returns how many went."""
    cur = await conn.execute("delete from dead_letters where received_at < %s", (now - timedelta(days=retention_days),))
    return cur.rowcount


def payload_text(payload: bytes) -> dict[str, object]:
    """A payload for JSON: text if it is printable UTF-8 (parsed if JSON), else a hex preview."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        text = None
    # Binary frames (HJ 212 is text, the manhole TLV is not) read better as hex.
    if text is None or any(ord(c) < 32 and c not in "\t\r\n" for c in text):
        return {"encoding": "hex", "data": payload[:1024].hex()}
    try:
        return {"encoding": "json", "data": json.loads(text)}
    except ValueError:
        return {"encoding": "text", "data": text}
