import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import RawMessage, Transport
from ingest.batch import decode_batch, encode_batch
from ingest.errors import DecodeError

RX = datetime(2026, 11, 29, 8, 0, 5, 123456, tzinfo=UTC)


def test_round_trip_keeps_everything() -> None:
    msgs = [
        RawMessage(
            "citybrain/up/35020603080000017/telemetry",
            b'{"v":1}',
            RX,
            Transport.MQTT,
            "35020603080000017",
            (("qos", "1"),),
        ),
        RawMessage("hj212/127.0.0.1:5000", b"##0101QN=...\r\n", RX, Transport.HJ212, None, ()),
        RawMessage("webhook/ctwing", bytes(range(256)), RX, Transport.WEBHOOK, "35020301050000011", (("a", "b=c"),)),
    ]
    assert decode_batch(encode_batch(msgs)) == msgs


def test_empty_batch() -> None:
    assert decode_batch(encode_batch([])) == []


@pytest.mark.parametrize("data", [b"", b"CBR", b"XXXX\x00\x00\x00\x01", b"CBR1\x00\x00\x00\x02"])
def test_bad_records(data: bytes) -> None:
    with pytest.raises(DecodeError) as ei:
        decode_batch(data)
    assert ei.value.reason == "bad_batch"


def test_truncation_and_trailing_bytes_are_detected() -> None:
    rec = encode_batch([RawMessage("t/x", b"payload", RX)])
    for cut in range(len(rec) - 1):
        with pytest.raises(DecodeError):
            decode_batch(rec[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        decode_batch(rec + b"x")


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_batch(b"CBR1" + data)
