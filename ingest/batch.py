"""The raw-batch record: many raw messages in one Kafka record.

A Kafka record on ``citybrain.raw`` carries a batch of raw messages for one
partition (the gateway packs them per partition, see ``partition_for``), so
the broker and the stream workers handle records, not messages, and one
device's messages keep their order inside and across records.

Binary layout, version 1 (all integers big-endian)::

    magic   4s   b"CBR1"
    count   u32
    count × message:
        received_at_us  i64
        transport       u8   (0 mqtt, 1 hj212, 2 webhook)
        topic_len       u16, topic     utf-8
        code_len        u8,  code      ascii (0 = not known at ingest)
        meta_len        u16, meta      utf-8 "k=v\\n" lines
        payload_len     u32, payload   bytes (the original, unaltered)

A binary frame rather than JSON because payloads may be binary (HJ 212 text,
vendor TLV frames) and base64 would cost a third more bytes and CPU.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from datetime import UTC, datetime

from core.records import RawMessage, Transport, epoch_us, utc_from_epoch_us
from ingest.errors import DecodeError

__all__ = ["MAGIC", "dead_letter_headers", "decode_batch", "encode_batch"]

MAGIC = b"CBR1"
_TRANSPORTS = (Transport.MQTT, Transport.HJ212, Transport.WEBHOOK)
_T_INDEX = {t: i for i, t in enumerate(_TRANSPORTS)}
_HEAD = struct.Struct(">4sI")
_MSG = struct.Struct(">qBH")
_MAX_MESSAGES = 1_000_000


def encode_batch(messages: Iterable[RawMessage]) -> bytes:
    """Pack raw messages into one record value."""
    parts: list[bytes] = []
    count = 0
    for m in messages:
        topic = m.topic.encode()
        code = (m.device_code or "").encode("ascii")
        meta = "".join(f"{k}={v}\n" for k, v in m.meta).encode()
        parts.append(_MSG.pack(epoch_us(m.received_at), _T_INDEX[m.transport], len(topic)))
        parts.append(topic)
        parts.append(bytes([len(code)]))
        parts.append(code)
        parts.append(len(meta).to_bytes(2, "big"))
        parts.append(meta)
        parts.append(len(m.payload).to_bytes(4, "big"))
        parts.append(m.payload)
        count += 1
    return _HEAD.pack(MAGIC, count) + b"".join(parts)


def decode_batch(data: bytes) -> list[RawMessage]:
    """Unpack a record value.

    Raises:
        DecodeError: ``bad_batch`` if the record is not a valid version-1 batch.
    """
    if len(data) < _HEAD.size:
        raise DecodeError("bad_batch", "record shorter than its header")
    magic, count = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise DecodeError("bad_batch", f"unknown magic {magic!r}")
    if count > _MAX_MESSAGES:
        raise DecodeError("bad_batch", f"implausible message count {count}")
    out: list[RawMessage] = []
    pos = _HEAD.size
    n = len(data)
    try:
        for _ in range(count):
            rx_us, t_idx, topic_len = _MSG.unpack_from(data, pos)
            pos += _MSG.size
            topic = data[pos : pos + topic_len].decode()
            pos += topic_len
            code_len = data[pos]
            pos += 1
            code = data[pos : pos + code_len].decode("ascii") or None
            pos += code_len
            meta_len = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            meta_text = data[pos : pos + meta_len].decode()
            pos += meta_len
            payload_len = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
            if pos + payload_len > n:
                raise DecodeError("bad_batch", "payload runs past the end of the record")
            payload = data[pos : pos + payload_len]
            pos += payload_len
            meta = tuple(tuple(line.split("=", 1)) for line in meta_text.splitlines() if "=" in line)
            out.append(
                RawMessage(
                    topic=topic,
                    payload=payload,
                    received_at=utc_from_epoch_us(rx_us),
                    transport=_TRANSPORTS[t_idx],
                    device_code=code,
                    meta=meta,  # type: ignore[arg-type]
                )
            )
    except DecodeError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError("bad_batch", str(exc)) from exc
    if pos != n:
        raise DecodeError("bad_batch", f"{n - pos} trailing bytes")
    return out


def dead_letter_headers(
    reason: str, detail: str, topic: str, received_at: datetime | None, source: str
) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter record; the record's value is the original payload."""
    return [
        ("reason", reason.encode()),
        ("detail", detail[:500].encode()),
        ("topic", topic.encode()),
        ("received_at", (received_at or datetime.now(UTC)).isoformat().encode()),
        ("source", source.encode()),
    ]
