"""Tests of the pure HJ 212-2017 codec on byte fixtures (tests/fixtures/hj212)."""

from __future__ import annotations

import contextlib
import string
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import Quality
from ingest.adapters.hj212 import (
    FLAG_QUALITY,
    MAX_FRAME_LEN,
    FrameDecoder,
    Hj212Packet,
    Hj212Value,
    Reassembler,
    command_set_rtd_interval,
    command_set_time,
    cp_params,
    cp_values,
    crc16,
    decode,
    encode,
    factor_values,
    frame,
    make_qn,
    parse_segment,
    reply_9011,
    reply_9012,
    reply_9014,
    to_readings,
)
from ingest.errors import DecodeError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hj212"
SHANGHAI = ZoneInfo("Asia/Shanghai")
RECEIVED = datetime(2024, 5, 15, 2, 30, 5, tzinfo=UTC)
APPENDIX_C_SEGMENT = (
    b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
)
METRICS = {
    "a34004": "pm25",
    "a34002": "pm10",
    "a21026": "so2",
    "a21004": "no2",
    "a21005": "co",
    "a05024": "o3",
    "w01001": "ph",
    "w01009": "do",
    "w01019": "codmn",
    "w21003": "nh3n",
    "w21011": "tp",
    "LA": "noise_la",
    "Leq": "noise_leq",
}
SINGLE_FRAME_FIXTURES = [
    "appendix_c_1062.bin",
    "air_2011_rtd.bin",
    "water_2061_hour.bin",
    "noise_2011_rtd.bin",
    "noise_2031_day.bin",
]
HEADER = "QN=20240515103000123;ST=22;CN=2011;PW=123456;MN=AIR001;Flag=4;"


def reference_crc(data: bytes) -> int:
    """The Python reference of docs/standards.md §2.7, kept independent of the codec."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ b
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def segments_of(data: bytes) -> list[bytes]:
    """Split concatenated frames using the length fields (independent of FrameDecoder)."""
    out = []
    while data:
        length = int(data[2:6])
        out.append(data[6 : 6 + length])
        data = data[6 + length + 6 :]
    return out


def all_fixture_bytes() -> bytes:
    return b"".join(fixture(name) for name in [*SINGLE_FRAME_FIXTURES, "water_2061_split_2of2.bin"])


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes | DecodeError]:
    out: list[bytes | DecodeError] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def packet(cn: str, cp: str, *, st_code: str = "22") -> Hj212Packet:
    return parse_segment(f"QN=20240515103000123;ST={st_code};CN={cn};PW=123456;MN=AIR001;Flag=4;CP=&&{cp}&&".encode())


def readings_of(p: Hj212Packet, tz=SHANGHAI):
    return to_readings(p, device_code="3502060308000001", received_at=RECEIVED, tz=tz, metric_for_code=METRICS)


# --- CRC and framing -------------------------------------------------------------------------------------


def test_crc_of_appendix_c_example_is_1c80() -> None:
    assert crc16(APPENDIX_C_SEGMENT) == 0x1C80
    assert len(APPENDIX_C_SEGMENT) == 101


@pytest.mark.parametrize("name", [*SINGLE_FRAME_FIXTURES, "water_2061_split_2of2.bin"])
def test_fixture_crcs_agree_with_the_reference_algorithm(name: str) -> None:
    data = fixture(name)
    for segment in segments_of(data):
        assert crc16(segment) == reference_crc(segment)
    assert b"".join(frame(s.decode()) for s in segments_of(data)) == data


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_crc16_matches_reference(data: bytes) -> None:
    assert crc16(data) == reference_crc(data)


def test_frame_reproduces_appendix_c_bytes() -> None:
    assert frame(APPENDIX_C_SEGMENT.decode()) == fixture("appendix_c_1062.bin")


def test_frame_zero_pads_length_and_crc() -> None:
    # "ST=101" happens to have CRC 0x0000, the extreme case for zero padding.
    assert reference_crc(b"ST=101") == 0
    assert frame("ST=101") == b"##0006ST=1010000\r\n"
    for seg in ["ST=22", "ST=2", "QN=", "x" * 9]:
        out = frame(seg)
        assert out == b"##%04d%s%04X\r\n" % (len(seg), seg.encode(), reference_crc(seg.encode()))


def test_frame_rejects_oversized_and_non_ascii_segments() -> None:
    with pytest.raises(DecodeError) as info:
        frame("x" * 1025)
    assert info.value.reason == "too_large"
    with pytest.raises(DecodeError) as info:
        frame("MN=站点")
    assert info.value.reason == "bad_segment"


# --- decode / parse_segment --------------------------------------------------------------------------------


def test_decode_appendix_c() -> None:
    p = decode(fixture("appendix_c_1062.bin"))
    assert p == Hj212Packet(
        qn="20160801085857223",
        st="32",
        cn="1062",
        pw="100000",
        mn="010000A8900016F000169DC0",
        flag=5,
        cp=(("RtdInterval", "30"),),
    )
    assert p.needs_ack
    assert not p.is_split
    assert p.version_2017
    assert cp_params(p) == {"RtdInterval": "30"}


@pytest.mark.parametrize("name", SINGLE_FRAME_FIXTURES)
def test_encode_decode_round_trips_fixtures(name: str) -> None:
    data = fixture(name)
    assert encode(decode(data)) == data


def test_decode_accepts_lower_case_crc() -> None:
    data = fixture("appendix_c_1062.bin").replace(b"1C80\r\n", b"1c80\r\n")
    assert decode(data).cn == "1062"


def test_flag_properties() -> None:
    def flagged(flag: int) -> Hj212Packet:
        pnum, pno = (2, 1) if flag & 2 else (None, None)
        return Hj212Packet(qn="", st="22", cn="2011", pw="", mn="A", flag=flag, pnum=pnum, pno=pno)

    assert (flagged(4).needs_ack, flagged(4).is_split, flagged(4).version_2017) == (False, False, True)
    assert (flagged(7).needs_ack, flagged(7).is_split, flagged(7).version_2017) == (True, True, True)
    assert not flagged(0).version_2017  # HJ/T 212-2005
    assert not flagged(8).version_2017


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"#0101" + APPENDIX_C_SEGMENT + b"1C80\r\n", "bad_header"),
        (b"##0101" + APPENDIX_C_SEGMENT + b"1C80\n", "bad_header"),
        (b"##01a1" + APPENDIX_C_SEGMENT + b"1C80\r\n", "bad_length"),
        (b"##0100" + APPENDIX_C_SEGMENT + b"1C80\r\n", "bad_length"),
        (b"##0102" + APPENDIX_C_SEGMENT + b"1C80\r\n", "bad_length"),
        (b"##1025" + b"x" * 1025 + b"0000\r\n", "too_large"),
        (b"##0101" + APPENDIX_C_SEGMENT + b"1C81\r\n", "bad_crc"),
        (b"##0101" + APPENDIX_C_SEGMENT + b"1CX0\r\n", "bad_crc"),
        (b"##0101" + APPENDIX_C_SEGMENT + b"+C80\r\n", "bad_crc"),
    ],
)
def test_decode_rejects_bad_frames(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.reason == reason


def test_parse_segment_accepts_missing_qn_and_split_fields() -> None:
    p = parse_segment(b"ST=22;CN=2011;PW=123456;MN=AIR001;Flag=6;PNUM=3;PNO=2;CP=&&&&")
    assert (p.qn, p.pnum, p.pno, p.cp) == ("", 3, 2, ())
    assert encode(p) == frame("ST=22;CN=2011;PW=123456;MN=AIR001;Flag=6;PNUM=3;PNO=2;CP=&&&&")


def test_parse_segment_keeps_cp_items_in_order() -> None:
    p = packet("2011", "DataTime=20240515103000;a34004-Rtd=35.2,a34004-Flag=N;a34002-Rtd=58")
    assert p.cp == (
        ("DataTime", "20240515103000"),
        ("a34004-Rtd", "35.2"),
        ("a34004-Flag", "N"),
        ("a34002-Rtd", "58"),
    )
    assert factor_values(p) == [
        Hj212Value("a34004", "Rtd", "35.2"),
        Hj212Value("a34004", "Flag", "N"),
        Hj212Value("a34002", "Rtd", "58"),
    ]


def _seg(**over: str) -> bytes:
    fields = {
        "QN": "20240515103000123",
        "ST": "22",
        "CN": "2011",
        "PW": "123456",
        "MN": "AIR001",
        "Flag": "4",
    }
    fields.update(over)
    head = "".join(f"{k}={v};" for k, v in fields.items() if v != "<drop>")
    return f"{head}CP=&&DataTime=20240515103000&&".encode()


@pytest.mark.parametrize(
    ("segment", "reason", "field"),
    [
        (_seg(QN="2024051510300012"), "bad_field", "QN"),
        (_seg(QN="2024051510300012x"), "bad_field", "QN"),
        (_seg(ST="2"), "bad_field", "ST"),
        (_seg(ST="222"), "bad_field", "ST"),
        (_seg(ST="2a"), "bad_field", "ST"),
        (_seg(CN="201"), "bad_field", "CN"),
        (_seg(CN="20111"), "bad_field", "CN"),
        (_seg(PW="1234567"), "bad_field", "PW"),
        (_seg(PW="12-456"), "bad_field", "PW"),
        (_seg(MN=""), "bad_field", "MN"),
        (_seg(MN="A" * 25), "bad_field", "MN"),
        (_seg(MN="AIR_001"), "bad_field", "MN"),
        (_seg(Flag="256"), "bad_field", "Flag"),
        (_seg(Flag="1000"), "bad_field", "Flag"),
        (_seg(Flag="-1"), "bad_field", "Flag"),
        (_seg(Flag=""), "bad_field", "Flag"),
        (_seg(Flag="6"), "bad_field", "PNUM"),  # split bit without PNUM/PNO
        (_seg(Flag="4;PNUM=2;PNO=1"), "bad_field", "PNUM"),  # PNUM/PNO without split bit
        (_seg(Flag="6;PNUM=2;PNO=3"), "bad_field", "PNO"),
        (_seg(Flag="6;PNUM=0;PNO=0"), "bad_field", "PNUM"),
        (_seg(Flag="6;PNUM=x;PNO=1"), "bad_field", "PNUM"),
        (_seg(Flag="6;PNUM=2;PNO=12345"), "bad_field", "PNO"),
        (_seg(ST="<drop>"), "bad_segment", "header"),
        (_seg(PW="<drop>"), "bad_segment", "header"),
        (b"ST=22;QN=20240515103000123;CN=2011;PW=1;MN=A;Flag=4;CP=&&&&", "bad_segment", "header"),
        (b"QN=20240515103000123;ST=22;CN=2011;PW=1;MN=A;Flag=4;XX=1;CP=&&&&", "bad_segment", "header"),
        (b"QN=20240515103000123;ST=22;CN=2011;PW=1;MN=A;Flag=4;ST;CP=&&&&", "bad_segment", "key=value"),
        (b"QN=20240515103000123;ST=22;CN=2011;PW=1;MN=A;Flag=4CP=&&&&", "bad_segment", "header"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=1", "bad_segment", "CP="),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&&", "bad_segment", "CP="),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;", "bad_segment", "CP="),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=1;;b=2&&", "bad_segment", "CP item"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=1;b&&", "bad_segment", "CP item"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&=1&&", "bad_field", "CP"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a-b-c=1&&", "bad_field", "CP"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=x&y&&", "bad_field", "CP"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&" + b"a=1;" * 238 + b"a=1&&", "too_large", "CP"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=" + b"1" * 1000 + b"&&", "too_large", ""),
        (b"ST=22;CN=2011;PW=1;MN=\xe7\xab\x99;Flag=4;CP=&&&&", "bad_segment", "ASCII"),
        (b"ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a=1\r\n&&", "bad_segment", "control"),
        (b"", "bad_segment", "CP="),
    ],
)
def test_parse_segment_errors(segment: bytes, reason: str, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_segment(segment)
    assert info.value.reason == reason
    assert field in info.value.detail


@pytest.mark.parametrize(
    ("segment", "detail"),
    [
        # Regression: a packet without Flag was reported as "header fields … out of order".
        (_seg(Flag="<drop>"), "header field Flag missing"),
        (_seg(ST="<drop>", PW="<drop>"), "header fields ST,PW missing"),
        (_seg(Flag="6;PNUM=2"), "header field PNO missing"),
        (b"QN=20240515103000123;ST=22;CN=2011;PW=1;MN=A;Flag=4;XX=1;CP=&&&&", "header field XX not allowed"),
        (b"ST=22;CN=2011;CN=2011;PW=1;MN=A;Flag=4;CP=&&&&", "header field CN given more than once"),
        (b"ST=22;QN=20240515103000123;CN=2011;PW=1;MN=A;Flag=4;CP=&&&&", "out of order"),
        (b"ST=22;PW=1;CN=2011;MN=A;Flag=4;CP=&&&&", "out of order"),
    ],
)
def test_parse_segment_names_the_header_problem(segment: bytes, detail: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_segment(segment)
    assert info.value.reason == "bad_segment"
    assert detail in info.value.detail


def test_packet_validates_on_construction() -> None:
    with pytest.raises(DecodeError, match="MN"):
        Hj212Packet(qn="", st="22", cn="2011", pw="", mn="bad mn", flag=4)
    with pytest.raises(DecodeError, match="Flag"):
        Hj212Packet(qn="", st="22", cn="2011", pw="", mn="A", flag=True)
    with pytest.raises(DecodeError, match="CP"):
        Hj212Packet(qn="", st="22", cn="2011", pw="", mn="A", flag=4, cp=(("a", "1;b=2"),))


def test_encode_rejects_cp_longer_than_950() -> None:
    p = Hj212Packet(qn="", st="22", cn="2011", pw="", mn="A", flag=4, cp=(("a", "1" * 949),))
    with pytest.raises(DecodeError) as info:
        encode(p)
    assert info.value.reason == "too_large"


def test_encode_joins_sub_items_of_one_factor_with_commas() -> None:
    data = fixture("air_2011_rtd.bin")
    assert b"a34004-Rtd=35.2,a34004-Flag=N;a34002-Rtd=58.0" in data
    assert encode(decode(data)) == data


# --- FrameDecoder ----------------------------------------------------------------------------------------


def test_frame_decoder_coalesced_frames_in_one_read() -> None:
    data = all_fixture_bytes()
    assert FrameDecoder().feed(data) == segments_of(data)


def test_frame_decoder_frame_split_at_every_position() -> None:
    data = fixture("appendix_c_1062.bin")
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert feed_all(decoder, [data[:cut], data[cut:]]) == [APPENDIX_C_SEGMENT]
        assert decoder.pending_bytes == 0


def test_frame_decoder_byte_by_byte() -> None:
    data = all_fixture_bytes()
    decoder = FrameDecoder()
    out = feed_all(decoder, [data[i : i + 1] for i in range(len(data))])
    assert out == segments_of(data)
    assert decoder.pending_bytes == 0


def test_frame_decoder_resynchronises_on_garbage() -> None:
    frame_bytes = fixture("appendix_c_1062.bin")
    stream = b"\x00\xffjunk#" + frame_bytes + b"\r\nnoise ## more#" + frame_bytes + b"tail#"
    out = FrameDecoder().feed(stream)
    errors = [item for item in out if isinstance(item, DecodeError)]
    assert [item for item in out if isinstance(item, bytes)] == [APPENDIX_C_SEGMENT] * 2
    # One report per garbage run (before, between, after), not one per byte.
    assert [e.reason for e in errors] == ["bad_header"] * 3


def test_frame_decoder_recovers_from_stray_header_inside_garbage() -> None:
    frame_bytes = fixture("appendix_c_1062.bin")
    # "##0999QN=" claims a near-maximal frame; the real frame after it must not be lost.
    stream = b"##0999QN=trunc" + frame_bytes + fixture("air_2011_rtd.bin") * 9
    out = FrameDecoder().feed(stream)
    assert [getattr(item, "reason", item) for item in out[:2]] == ["bad_length", APPENDIX_C_SEGMENT]
    assert out[2:] == segments_of(fixture("air_2011_rtd.bin")) * 9


def test_frame_decoder_does_not_wait_on_implausible_header() -> None:
    frame_bytes = fixture("appendix_c_1062.bin")
    out = FrameDecoder().feed(b"##0500xyz" + frame_bytes)
    assert [getattr(item, "reason", item) for item in out] == ["bad_header", APPENDIX_C_SEGMENT]


def test_frame_decoder_keeps_a_frame_after_extra_hash() -> None:
    out = FrameDecoder().feed(b"#" + fixture("appendix_c_1062.bin"))
    assert [getattr(item, "reason", item) for item in out] == ["bad_length", APPENDIX_C_SEGMENT]


def test_frame_decoder_reports_bad_crc_and_continues() -> None:
    good = fixture("appendix_c_1062.bin")
    bad = good.replace(b"1C80\r\n", b"1C81\r\n")
    out = FrameDecoder().feed(bad + bad + good)
    assert [getattr(item, "reason", item) for item in out] == ["bad_crc", "bad_crc", APPENDIX_C_SEGMENT]


def test_frame_decoder_reports_bad_length_and_continues() -> None:
    good = fixture("appendix_c_1062.bin")
    short = good.replace(b"##0101", b"##0100")
    out = FrameDecoder().feed(short + good)
    assert [getattr(item, "reason", item) for item in out] == ["bad_length", APPENDIX_C_SEGMENT]


def test_frame_decoder_rejects_length_over_1024() -> None:
    good = fixture("appendix_c_1062.bin")
    out = FrameDecoder().feed(b"##1025QN=" + b"1" * 1100 + b"\r\n" + good)
    assert [getattr(item, "reason", item) for item in out] == ["too_large", APPENDIX_C_SEGMENT]


def test_frame_decoder_accepts_maximal_frame() -> None:
    head = "ST=22;CN=2011;PW=1;MN=A;Flag=4;CP=&&a="
    segment = head + "1" * (1024 - len(head) - 2) + "&&"
    data = frame(segment)
    assert len(data) == MAX_FRAME_LEN
    decoder = FrameDecoder()
    assert feed_all(decoder, [data[:500], data[500:]]) == [segment.encode()]


def test_frame_decoder_buffer_stays_bounded() -> None:
    decoder = FrameDecoder(max_buffer=2048)
    out = decoder.feed(b"x" * 100_000)
    assert [e.reason for e in out if isinstance(e, DecodeError)] == ["bad_header"]
    assert decoder.pending_bytes == 0
    out = decoder.feed(b"#" * 50_000)
    assert len(out) <= 1
    assert decoder.pending_bytes <= 2
    out = decoder.feed(b"##0999QN=" + b"a" * 20_000)
    assert decoder.pending_bytes < MAX_FRAME_LEN
    assert decoder.feed(b"\r\n" + fixture("appendix_c_1062.bin"))[-1] == APPENDIX_C_SEGMENT


def test_frame_decoder_rejects_too_small_buffer() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        FrameDecoder(max_buffer=1000)


# --- CP interpretation and readings ------------------------------------------------------------------------


def test_cp_values_groups_by_factor() -> None:
    p = decode(fixture("water_2061_hour.bin"))
    values = cp_values(p)
    assert [code for _, code, _ in values] == ["w01001", "w01009", "w01019", "w21003", "w21011"]
    when, _, fields = values[0]
    assert when == datetime(2024, 5, 15, 10, 0, 0)
    assert fields == {"Avg": "7.42", "Min": "7.38", "Max": "7.47", "Flag": "N"}
    assert cp_params(p) == {"DataTime": "20240515100000"}


def test_cp_values_with_several_data_times() -> None:
    p = packet("2061", "a34004-Avg=1;DataTime=20240515100000;a34004-Avg=2;DataTime=20240515110000;a34004-Avg=3")
    assert cp_values(p) == [
        (None, "a34004", {"Avg": "1"}),
        (datetime(2024, 5, 15, 10), "a34004", {"Avg": "2"}),
        (datetime(2024, 5, 15, 11), "a34004", {"Avg": "3"}),
    ]


def test_cp_values_single_data_time_applies_everywhere() -> None:
    p = packet("2011", "a34004-Rtd=1;DataTime=20240515100000")
    assert cp_values(p) == [(datetime(2024, 5, 15, 10), "a34004", {"Rtd": "1"})]


@pytest.mark.parametrize("value", ["2024051510000", "20241315100000", "20240515250000", "2024-05-15T10"])
def test_cp_values_rejects_bad_data_time(value: str) -> None:
    with pytest.raises(DecodeError) as info:
        cp_values(packet("2011", f"DataTime={value};a34004-Rtd=1"))
    assert info.value.reason == "bad_field"


def test_to_readings_air_realtime() -> None:
    result = readings_of(decode(fixture("air_2011_rtd.bin")))
    got = {r.metric: (r.value, r.quality, r.flag) for r in result.readings}
    assert got == {
        "pm25": (35.2, Quality.GOOD, "N"),
        "pm10": (58.0, Quality.GOOD, "N"),
        "so2": (8.0, Quality.GOOD, "N"),
        "no2": (31.0, Quality.GOOD, "N"),
        "co": (0.6, Quality.BAD, "D"),
        "o3": (87.0, Quality.SUSPECT, "M"),
    }
    # DataTime 2024-05-15 10:30:00 Asia/Shanghai (UTC+8) → 02:30:00Z.
    assert {r.event_time for r in result.readings} == {datetime(2024, 5, 15, 2, 30, tzinfo=UTC)}
    assert {r.received_at for r in result.readings} == {RECEIVED}
    assert result.unknown_codes == ()


def test_to_readings_water_hourly_avg_min_max() -> None:
    result = readings_of(decode(fixture("water_2061_hour.bin")))
    got = {r.metric: (r.value, r.quality) for r in result.readings}
    assert got["ph"] == (7.42, Quality.GOOD)
    assert got["ph_min"] == (7.38, Quality.GOOD)
    assert got["ph_max"] == (7.47, Quality.GOOD)
    assert got["codmn"] == (3.9, Quality.SUSPECT)  # C 校准
    assert got["tp_max"] == (0.131, Quality.BAD)  # F 停运
    assert len(result.readings) == 15
    assert {r.event_time for r in result.readings} == {datetime(2024, 5, 15, 2, 0, tzinfo=UTC)}


def test_to_readings_noise_realtime_reports_unknown_codes() -> None:
    result = readings_of(decode(fixture("noise_2011_rtd.bin")))
    assert {r.metric: r.value for r in result.readings} == {"noise_la": 56.3, "noise_leq": 55.1}
    assert result.unknown_codes == ("L10", "L90")


def test_to_readings_noise_day_and_night() -> None:
    result = readings_of(decode(fixture("noise_2031_day.bin")))
    assert {r.metric: r.value for r in result.readings} == {
        "noise_leq": 58.2,
        "noise_leq_day": 60.1,
        "noise_leq_night": 49.8,
    }
    # 2024-05-15 00:00 local is the previous day 16:00 UTC.
    assert {r.event_time for r in result.readings} == {datetime(2024, 5, 14, 16, 0, tzinfo=UTC)}


def test_to_readings_uses_the_given_time_zone_and_units() -> None:
    p = packet("2011", "DataTime=20240515103000;a34004-Rtd=1")
    result = to_readings(
        p,
        device_code="dev1",
        received_at=RECEIVED,
        tz=timezone(timedelta(hours=-3)),
        metric_for_code=METRICS,
        unit_for_code={"a34004": "ug/m3"},
    )
    (reading,) = result.readings
    assert reading.event_time == datetime(2024, 5, 15, 13, 30, tzinfo=UTC)
    assert reading.unit == "ug/m3"
    assert reading.flag is None
    assert reading.quality is Quality.GOOD


@pytest.mark.parametrize(
    ("letter", "quality"),
    [
        ("N", Quality.GOOD),
        ("F", Quality.BAD),
        ("M", Quality.SUSPECT),
        ("S", Quality.SUSPECT),
        ("D", Quality.BAD),
        ("C", Quality.SUSPECT),
        ("T", Quality.SUSPECT),
        ("B", Quality.SUSPECT),
        ("Z", Quality.SUSPECT),  # unknown letters are not trusted
    ],
)
def test_flags_map_to_quality(letter: str, quality: Quality) -> None:
    p = packet("2011", f"DataTime=20240515103000;a34004-Rtd=12.5,a34004-Flag={letter}")
    (reading,) = readings_of(p).readings
    assert (reading.quality, reading.flag) == (quality, letter)
    assert set(FLAG_QUALITY) == set("NFMSDCTB")


@pytest.mark.parametrize("value", ["abc", "", "nan", "inf", "1e5", "1_000", "1" * 400, " 1"])
def test_non_numeric_values_raise_bad_value(value: str) -> None:
    p = packet("2011", f"DataTime=20240515103000;a34004-Rtd={value}")
    with pytest.raises(DecodeError) as info:
        readings_of(p)
    assert info.value.reason == "bad_value"


def test_missing_data_time_is_rejected() -> None:
    with pytest.raises(DecodeError) as info:
        readings_of(packet("2011", "a34004-Rtd=1"))
    assert info.value.reason == "bad_field"


def test_realtime_ignores_avg_and_hourly_ignores_rtd() -> None:
    assert readings_of(packet("2011", "DataTime=20240515103000;a34004-Avg=1")).readings == ()
    assert readings_of(packet("2061", "DataTime=20240515103000;a34004-Rtd=1")).readings == ()


def test_non_data_commands_give_no_readings() -> None:
    result = readings_of(decode(fixture("appendix_c_1062.bin")))
    assert (result.readings, result.unknown_codes) == ((), ())


# --- Reassembly -------------------------------------------------------------------------------------------


def split_parts() -> list[Hj212Packet]:
    return [parse_segment(s) for s in segments_of(fixture("water_2061_split_2of2.bin"))]


def test_reassembler_merges_in_pno_order() -> None:
    first, second = split_parts()
    assert (first.pnum, first.pno, second.pno) == (2, 1, 2)
    assembler = Reassembler()
    assert assembler.add(second, now=0.0) is None
    assert assembler.pending == 1
    merged = assembler.add(first, now=1.0)
    assert merged is not None
    assert assembler.pending == 0
    assert merged.cp == first.cp + second.cp
    assert (merged.pnum, merged.pno, merged.is_split, merged.needs_ack) == (None, None, False, True)
    assert (merged.qn, merged.mn, merged.cn) == (first.qn, first.mn, first.cn)
    codes = [code for _, code, _ in cp_values(merged)]
    assert codes == ["w01001", "w01009", "w21003"]
    assert len(readings_of(merged).readings) == 9


def test_reassembler_passes_unsplit_packets_through() -> None:
    p = decode(fixture("appendix_c_1062.bin"))
    assert Reassembler().add(p, now=0.0) is p


def test_reassembler_ignores_duplicate_parts() -> None:
    first, second = split_parts()
    assembler = Reassembler()
    assert assembler.add(first, now=0.0) is None
    assert assembler.add(first, now=0.5) is None
    assert assembler.add(second, now=1.0) is not None


def test_reassembler_bounds_pending_messages() -> None:
    first, _ = split_parts()
    assembler = Reassembler(max_pending=3)
    for i in range(5):
        assert assembler.add(Hj212Packet(**{**_fields(first), "qn": f"{i:017d}"}), now=float(i)) is None
    assert (assembler.pending, assembler.dropped) == (3, 2)


def test_reassembler_expires_stale_partials() -> None:
    first, second = split_parts()
    assembler = Reassembler(ttl_seconds=60.0)
    assembler.add(first, now=0.0)
    assert assembler.expire(now=30.0) == 0
    assert assembler.expire(now=61.0) == 1
    assert (assembler.pending, assembler.expired) == (0, 1)
    assert assembler.add(second, now=62.0) is None  # the late part starts a new partial


def test_reassembler_rejects_inconsistent_pnum() -> None:
    first, _ = split_parts()
    assembler = Reassembler()
    assembler.add(first, now=0.0)
    other = Hj212Packet(**{**_fields(first), "pnum": 3, "pno": 2})
    with pytest.raises(DecodeError) as info:
        assembler.add(other, now=1.0)
    assert info.value.reason == "bad_split"
    assert assembler.pending == 0


def _fields(p: Hj212Packet) -> dict:
    return {name: getattr(p, name) for name in Hj212Packet.__dataclass_fields__}


# --- Replies and commands ---------------------------------------------------------------------------------


def test_command_set_rtd_interval_reproduces_appendix_c() -> None:
    out = command_set_rtd_interval("010000A8900016F000169DC0", "100000", 30, qn="20160801085857223", st="32")
    assert out == fixture("appendix_c_1062.bin")


def test_command_set_rtd_interval_rejects_bad_seconds() -> None:
    with pytest.raises(ValueError, match="seconds"):
        command_set_rtd_interval("A", "1", 0, qn="20160801085857223", st="22")


def test_replies_echo_qn_and_use_st91_flag4() -> None:
    request = decode(fixture("appendix_c_1062.bin"))
    head = "QN=20160801085857223;ST=91;CN={cn};PW=100000;MN=010000A8900016F000169DC0;Flag=4;"
    assert reply_9011(request) == frame(head.format(cn="9011") + "CP=&&QnRtn=1&&")
    assert reply_9011(request, qn_rtn=3) == frame(head.format(cn="9011") + "CP=&&QnRtn=3&&")
    assert reply_9012(request) == frame(head.format(cn="9012") + "CP=&&ExeRtn=1&&")
    assert reply_9012(request, exe_rtn=100) == frame(head.format(cn="9012") + "CP=&&ExeRtn=100&&")
    upload = decode(fixture("air_2011_rtd.bin"))
    ack = decode(reply_9014(upload))
    assert (ack.qn, ack.st, ack.cn, ack.flag, ack.cp, ack.mn) == (upload.qn, "91", "9014", 4, (), upload.mn)
    assert not ack.needs_ack


def test_reply_without_request_qn_omits_qn() -> None:
    request = parse_segment(b"ST=22;CN=2011;PW=123456;MN=AIR001;Flag=5;CP=&&&&")
    assert reply_9014(request) == frame("ST=91;CN=9014;PW=123456;MN=AIR001;Flag=4;CP=&&&&")


def test_reply_rejects_negative_codes() -> None:
    request = decode(fixture("appendix_c_1062.bin"))
    with pytest.raises(ValueError, match="qn_rtn"):
        reply_9011(request, qn_rtn=-1)


def test_command_set_time_sends_local_time() -> None:
    when = datetime(2024, 5, 15, 2, 30, 5, tzinfo=UTC)
    out = command_set_time("AIR001", "123456", when, SHANGHAI, qn="20240515103005000", st="22")
    assert out == frame(
        "QN=20240515103005000;ST=22;CN=1012;PW=123456;MN=AIR001;Flag=5;CP=&&SystemTime=20240515103005&&"
    )
    with_pol = decode(command_set_time("AIR001", "1", when, SHANGHAI, qn="", st="22", pol_id="a34004"))
    assert with_pol.cp == (("PolId", "a34004"), ("SystemTime", "20240515103005"))
    with pytest.raises(ValueError, match="aware"):
        command_set_time("AIR001", "1", datetime(2024, 5, 15), SHANGHAI, qn="", st="22")


def test_make_qn() -> None:
    assert make_qn(datetime(2016, 8, 1, 8, 58, 57, 223_999)) == "20160801085857223"
    assert make_qn(datetime(999, 1, 2, 3, 4, 5)) == "09990102030405000"


# --- Property tests ---------------------------------------------------------------------------------------

_DIGITS = string.digits
_ALNUM = string.ascii_letters + string.digits
_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ";,&")
_KEY_PART = st.text(alphabet=_ALNUM + "_", min_size=1, max_size=8)
_CP_KEYS = st.one_of(_KEY_PART, st.builds(lambda a, b: f"{a}-{b}", _KEY_PART, _KEY_PART))


@st.composite
def packets(draw: st.DrawFn) -> Hj212Packet:
    flag = draw(st.integers(0, 255))
    pnum = pno = None
    if flag & 2:
        pnum = draw(st.integers(1, 9999))
        pno = draw(st.integers(1, pnum))
    return Hj212Packet(
        qn=draw(st.one_of(st.just(""), st.text(_DIGITS, min_size=17, max_size=17))),
        st=draw(st.text(_DIGITS, min_size=2, max_size=2)),
        cn=draw(st.text(_DIGITS, min_size=4, max_size=4)),
        pw=draw(st.text(_ALNUM, max_size=6)),
        mn=draw(st.text(_ALNUM, min_size=1, max_size=24)),
        flag=flag,
        pnum=pnum,
        pno=pno,
        # ≤ 20 items of ≤ 30 characters keep CP under 950 and the segment under 1024.
        cp=tuple(draw(st.lists(st.tuples(_CP_KEYS, st.text(_VALUE_CHARS, max_size=12)), max_size=20))),
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(packets())
def test_decode_encode_round_trip(p: Hj212Packet) -> None:
    data = encode(p)
    assert decode(data) == p
    assert encode(decode(data)) == data


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=1200))
def test_parse_segment_and_decode_only_raise_decode_error(data: bytes) -> None:
    for parse in (parse_segment, decode):
        with contextlib.suppress(DecodeError):
            parse(data)


_PIECES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [fixture("appendix_c_1062.bin"), fixture("air_2011_rtd.bin"), b"##", b"#", b"\r\n", b"##0101", b"QN="]
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_PIECES, max_size=12), st.lists(st.integers(1, 200), max_size=20))
def test_frame_decoder_only_yields_segments_or_decode_errors(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    chunks = []
    for size in cuts:
        chunks.append(data[:size])
        data = data[size:]
    chunks.append(data)
    decoder = FrameDecoder()
    for item in feed_all(decoder, chunks):
        assert isinstance(item, bytes | DecodeError)
        if isinstance(item, bytes):
            with contextlib.suppress(DecodeError):
                parse_segment(item)
    assert decoder.pending_bytes < MAX_FRAME_LEN


_GARBAGE = st.binary(max_size=30).map(lambda b: b.replace(b"#", b""))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_GARBAGE, packets()), max_size=5), _GARBAGE, st.integers(1, 64))
def test_frame_decoder_recovers_every_frame_between_garbage(
    items: list[tuple[bytes, Hj212Packet]], tail: bytes, chunk: int
) -> None:
    stream = b"".join(garbage + encode(p) for garbage, p in items) + tail
    decoder = FrameDecoder()
    out = feed_all(decoder, [stream[i : i + chunk] for i in range(0, len(stream), chunk)])
    assert [parse_segment(s) for s in out if isinstance(s, bytes)] == [p for _, p in items]
    garbage_runs = sum(1 for garbage, _ in items if garbage) + (1 if tail else 0)
    assert len([e for e in out if isinstance(e, DecodeError)]) <= garbage_runs


def test_data_time_not_representable_in_utc_is_rejected() -> None:
    with pytest.raises(DecodeError) as info:
        readings_of(packet("2011", "DataTime=00010101000000;a34004-Rtd=1"))
    assert info.value.reason == "bad_field"


def test_packet_cp_must_be_a_tuple_of_pairs() -> None:
    with pytest.raises(DecodeError, match="CP"):
        Hj212Packet(qn="", st="22", cn="2011", pw="", mn="A", flag=4, cp=[("a", "1")])  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="CP"):
        Hj212Packet(qn="", st="22", cn="2011", pw="", mn="A", flag=4, cp=(("a", "1", "2"),))  # type: ignore[arg-type]


def test_reassembler_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        Reassembler(max_pending=0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        Reassembler(ttl_seconds=0)
