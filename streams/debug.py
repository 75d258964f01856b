"""What the per-device debug view reads: recent raw messages and dead letters, in PostgreSQL.

Two small tables, both cheap on the hot path and indexed by device, so the API
answers one device from an index instead of scanning Kafka:

* ``device_recent_messages``: a ring of the last :data:`RING` raw payloads per
  device (slot = position in the ring), with what normalisation made of each
  (decoded readings, or the reject reason). The worker writes one row per device
  per batch — the device's newest message in it — the same cost as the liveness
  upsert it sits beside; the table never grows beyond ``RING`` rows per device,
  so it needs no retention job.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from core.jsonio import dumps_text
from core.records import RawMessage, Reading
from core.topics import TopicError, parse_uplink

__all__ = [
    "MAX_PAYLOAD",
    "RING",
    "DeadLetter",
    "device_of",
    "payload_text",
    "prune_dead_letters",
    "record_dead_letters",
    "record_recent",
]

log = logging.getLogger(__name__)

#: Raw messages kept per device.
RING = 20
#: Payload bytes kept per message / dead letter (the view is for reading, not for replay).
MAX_PAYLOAD = 4096


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
