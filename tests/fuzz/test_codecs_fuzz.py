"""Fuzz targets of every ingest decoder: only the adapter's own DecodeError may escape.

Any other exception (IndexError, UnicodeError, struct.error, RecursionError …)
fails the target; hypothesis shrinks it to a minimal input.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.records import RawMessage, Transport
from ingest.adapters.hj212 import codec as hj212
from ingest.adapters.hj212.decoder import packet_of
from ingest.adapters.json import codec as json_codec
from ingest.adapters.manhole import codec as manhole
from ingest.batch import decode_batch, encode_batch
from ingest.errors import DecodeError
from tests.fuzz.strategies import FUZZ, json_values, mutated

pytestmark = pytest.mark.timeout(600)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RX = datetime(2026, 11, 29, tzinfo=UTC)
HJ212_FRAMES = sorted(p.read_bytes() for p in (FIXTURES / "hj212").glob("*.bin"))
MANHOLE_FRAMES = sorted(p.read_bytes() for p in (FIXTURES / "manhole").glob("*.bin"))
HJ212_SEGMENTS = [f[6:-6] for f in HJ212_FRAMES]


def _json_decode(payload: bytes) -> None:
    try:
        readings = json_codec.decode(payload, device_code="35020303080000012", received_at=RX)
    except DecodeError:
        return
    assert all(r.device_code == "35020303080000012" for r in readings)


@FUZZ
@given(st.binary(max_size=4096))
@example(b'{"v":1,"ts":1e400,"metrics":{"a":1}}')
@example(b'{"v":1,"ts":"2026-01-01T00:00:00Z","metrics":{"a":{"value":1e999}}}')
def test_json_codec_bytes(payload: bytes) -> None:
    _json_decode(payload)


# Found by this fuzz target: deeply nested JSON (well under the 64 KiB payload limit)
# raised RecursionError out of json.loads, which would fail a worker batch again and again.
def test_json_codec_deep_nesting_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        json_codec.decode(b"[" * 5000, device_code="35020303080000012", received_at=RX)


@st.composite
def _telemetry_docs(draw: st.DrawFn) -> Any:
    # Mostly well-shaped documents with hostile values, so the fuzzer gets past the first checks.
    metrics = draw(st.dictionaries(st.text(max_size=20), json_values, max_size=5))
    doc: dict[str, Any] = {
        "v": draw(st.sampled_from([1, 1, 1, 2, "1", None, True])),
        "ts": draw(json_values | st.sampled_from(["2026-11-29T08:00:00+08:00", 1_780_000_000_000, "2026-11-29"])),
        "metrics": metrics,
    }
    if draw(st.booleans()):
        doc = {"v": 1, "records": draw(st.lists(st.just(doc) | json_values, max_size=4))}
    return doc


@FUZZ
@given(_telemetry_docs())
def test_json_codec_documents(doc: Any) -> None:
    _json_decode(json.dumps(doc, allow_nan=True).encode())


@FUZZ
@given(st.binary(max_size=hj212.MAX_SEGMENT_LEN + 64) | mutated(HJ212_SEGMENTS, hj212.MAX_SEGMENT_LEN + 64))
def test_hj212_parse_segment(segment: bytes) -> None:
    try:
        packet = hj212.parse_segment(segment)
    except DecodeError:
        return
    # A parsed packet must survive the helpers the stream side calls on it.
    try:
        hj212.factor_values(packet)
        hj212.cp_params(packet)
        hj212.cp_values(packet)
    except DecodeError:
        pass


@st.composite
def _reframed(draw: st.DrawFn) -> bytes:
    # Mutate the segment, then frame it with a correct length and CRC: reaches the parser through decode().
    segment = draw(mutated(HJ212_SEGMENTS, hj212.MAX_SEGMENT_LEN))
    try:
        text = segment.decode("ascii")
        return hj212.frame(text)
    except (UnicodeDecodeError, DecodeError):
        return segment


@FUZZ
@given(st.binary(max_size=hj212.MAX_FRAME_LEN + 64) | mutated(HJ212_FRAMES, hj212.MAX_FRAME_LEN + 64) | _reframed())
def test_hj212_decode(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        hj212.decode(data)
    with contextlib.suppress(DecodeError):
        packet_of(data)


@FUZZ
@given(
    st.lists(
        st.binary(max_size=600) | mutated(HJ212_FRAMES, hj212.MAX_FRAME_LEN + 16) | _reframed(),
        max_size=12,
    ),
    st.integers(1, 97),
)
def test_hj212_frame_decoder_feed(chunks: list[bytes], split: int) -> None:
    decoder = hj212.FrameDecoder(max_buffer=4096)
    stream = b"".join(chunks)
    for i in range(0, len(stream), split):
        for item in decoder.feed(stream[i : i + split]):
            assert isinstance(item, bytes | DecodeError)
        # The buffer stays bounded whatever arrives.
        assert decoder.pending_bytes <= 4096


@FUZZ
@given(st.binary(max_size=manhole.MAX_FRAME_LEN + 64) | mutated(MANHOLE_FRAMES, manhole.MAX_FRAME_LEN + 64))
def test_manhole_decode(data: bytes) -> None:
    try:
        frame = manhole.decode(data)
    except DecodeError:
        return
    # Whatever decodes must encode again (the simulators rely on it).
    assert manhole.encode(frame)


def _batch_seed() -> bytes:
    msgs = [
        RawMessage("citybrain/up/35020303080000012/telemetry", b'{"v":1}', RX, Transport.MQTT, "35020303080000012"),
        RawMessage("hj212", HJ212_FRAMES[0], RX, Transport.HJ212, None, (("mn", "X"),)),
        RawMessage("webhook/ctwing", b"\x00\xff", RX, Transport.WEBHOOK, "35020303080000012", (("format", "binary"),)),
    ]
    return encode_batch(msgs)


@FUZZ
@given(st.binary(max_size=8192) | mutated([_batch_seed(), b"CBR1\x00\x00\x00\x01"], 8192))
def test_decode_batch(data: bytes) -> None:
    try:
        messages = decode_batch(data)
    except DecodeError:
        return
    assert all(isinstance(m, RawMessage) for m in messages)
