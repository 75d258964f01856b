"""Pure HJ 212-2017 codec: frames, data segments, CP items, replies and commands.

Nothing here does I/O. The connector owns the sockets and feeds bytes to a
per-connection :class:`FrameDecoder`; every function below is a plain
bytes ⇄ values transformation, so the simulators use the very same code.

Wire format (HJ 212-2017; the repository's ``docs/standards.md`` §2.1–§2.2,
which also lists the codes, flags and CRC cited below)::

    ## LLLL <data segment> CCCC \\r\\n
    data segment = QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM=…;PNO=…;]CP=&&…&&

Decoding problems are reported as :class:`~ingest.errors.DecodeError` with a
short, stable ``reason`` (``bad_header``, ``bad_length``, ``bad_crc``,
``bad_segment``, ``bad_field``, ``too_large``, ``bad_value``, ``bad_split``)
that is safe to use as a metric label. The parsing entry points
(:func:`parse_segment`, :func:`decode`, :meth:`FrameDecoder.feed`) never raise
anything else, whatever bytes they are given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from itertools import chain

from core.records import Quality, Reading
from ingest.errors import DecodeError

__all__ = [
    "CN_DATA_ACK",
    "CN_EXECUTE_RESULT",
    "CN_REQUEST_REPLY",
    "CN_SET_RTD_INTERVAL",
    "CN_SET_TIME",
    "DATA_CNS",
    "FLAG_QUALITY",
    "MAX_CP_LEN",
    "MAX_FRAME_LEN",
    "MAX_SEGMENT_LEN",
    "ST_SYSTEM_INTERACTION",
    "DecodedData",
    "FrameDecoder",
    "Hj212Packet",
    "Hj212Value",
    "Reassembler",
    "command_set_rtd_interval",
    "command_set_time",
    "cp_params",
    "cp_values",
    "crc16",
    "decode",
    "encode",
    "factor_values",
    "frame",
    "make_qn",
    "parse_segment",
    "reply_9011",
    "reply_9012",
    "reply_9014",
    "to_readings",
]

# --- Limits (HJ 212-2017; docs/standards.md §2.1–§2.2) ---------------------------------------------

#: The data segment is at most 1024 bytes; ``LLLL`` is 0000–1024.
MAX_SEGMENT_LEN = 1024
#: ``CP=&&…&&`` carries at most 950 characters between the ``&&`` markers.
MAX_CP_LEN = 950
_HEADER = b"##"
_TRAILER = b"\r\n"
#: ``##`` + ``LLLL`` before the segment, ``CCCC`` + CRLF after it.
_PREFIX_LEN = 6
_SUFFIX_LEN = 6
#: The longest frame on the wire (1036 bytes).
MAX_FRAME_LEN = _PREFIX_LEN + MAX_SEGMENT_LEN + _SUFFIX_LEN

# --- Codes (docs/standards.md §2.3/§2.4) --------------------------------------------------------

#: ST=91 系统交互: used for replies (HJ 212-2017, docs/standards.md §2.3).
ST_SYSTEM_INTERACTION = "91"
CN_SET_TIME = "1012"
CN_SET_RTD_INTERVAL = "1062"
CN_REQUEST_REPLY = "9011"
CN_EXECUTE_RESULT = "9012"
CN_DATA_ACK = "9014"
_CN_RTD = "2011"
_CN_MINUTE = "2051"
_CN_HOUR = "2061"
_CN_DAY = "2031"
#: Data uploads that :func:`to_readings` turns into readings (docs/standards.md §2.4).
DATA_CNS = frozenset({_CN_RTD, _CN_MINUTE, _CN_HOUR, _CN_DAY})

# --- Flag bits (docs/standards.md §2.2: bits ``V5 V4 V3 V2 V1 V0 D A``) --------------------------

_FLAG_ACK = 0b01  # A: the receiver must answer
_FLAG_SPLIT = 0b10  # D: the message is split, PNUM/PNO present
_FLAG_VERSION_SHIFT = 2
_VERSION_2017 = 1  # V5..V0 = 000001 → HJ 212-2017; 000000 → HJ/T 212-2005
#: Flag of a 2017 packet that needs no answer (replies; HJ 212-2017, docs/standards.md §2.2).
_FLAG_2017 = _VERSION_2017 << _FLAG_VERSION_SHIFT
#: Flag of a 2017 packet that asks for an answer (commands; Appendix C example uses Flag=5).
_FLAG_2017_ACK = _FLAG_2017 | _FLAG_ACK

# --- Data flags → quality (docs/standards.md §2.5) -------------------------------------------------

#: ``-Flag`` letter → quality. N 正常 is good; D 故障 and F 停运 mean the value is not a
#: measurement at all, so bad; the others (M 维护, S 手工设定, C 校准, T 超测量上限,
#: B 通讯异常) are real but doubtful values, so suspect.
FLAG_QUALITY: Mapping[str, Quality] = {
    "N": Quality.GOOD,
    "F": Quality.BAD,
    "D": Quality.BAD,
    "M": Quality.SUSPECT,
    "S": Quality.SUSPECT,
    "C": Quality.SUSPECT,
    "T": Quality.SUSPECT,
    "B": Quality.SUSPECT,
}

# --- Field formats (docs/standards.md §2.2, regex of HJ212Interpreter Command.cs) ------------------

_QN_RE = re.compile(r"[0-9]{17}", re.ASCII)
_ST_RE = re.compile(r"[0-9]{2}", re.ASCII)
_CN_RE = re.compile(r"[0-9]{4}", re.ASCII)
_PW_RE = re.compile(r"[0-9A-Za-z]{0,6}", re.ASCII)
_MN_RE = re.compile(r"[0-9A-Za-z]{1,24}", re.ASCII)
_FLAG_TEXT_RE = re.compile(r"[0-9]{1,3}", re.ASCII)
_PART_TEXT_RE = re.compile(r"[0-9]{1,4}", re.ASCII)
_MAX_PART = 9999  # PNUM/PNO are at most 4 digits
#: ``code-Field`` or a plain parameter name; at most one dash so the factor split is unambiguous.
_CP_KEY_RE = re.compile(r"[A-Za-z0-9_]{1,32}(?:-[A-Za-z0-9_]{1,32})?", re.ASCII)
#: Printable ASCII except the CP separators ``;`` ``,`` and the ``&`` of the ``&&`` markers.
_CP_VALUE_RE = re.compile(r"[\x20-\x25\x27-\x2b\x2d-\x3a\x3c-\x7e]*", re.ASCII)
_CP_TIME_RE = re.compile(r"[0-9]{14}", re.ASCII)
#: Plain decimal numbers as HJ 212 data types (N5.2 …) allow; no nan/inf/underscores.
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_HEX4_RE = re.compile(rb"[0-9A-Fa-f]{4}")
_DIGITS4_RE = re.compile(rb"[0-9]{4}")
#: Printable ASCII: a data segment never carries control characters.
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]*", re.ASCII)

_HEADER_KEYS = ("ST", "CN", "PW", "MN", "Flag")
_SPLIT_KEYS = ("PNUM", "PNO")
_CP_OPEN = "CP=&&"
_CP_CLOSE = "&&"
#: A real segment starts with one of these; used to resynchronise quickly on a stray ``##``.
_SEGMENT_STARTS = (b"QN=", b"ST=")


# --- CRC ---------------------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
        table.append(crc)
    return tuple(table)


# The HJ 212 CRC XORs each byte into ``crc >> 8`` (an 8-bit value), so the eight
# shift/xor rounds only ever see 256 distinct inputs: a 256-entry table is exact.
_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """HJ 212 CRC of a data segment.

    This is the HJ 212-2017 algorithm (docs/standards.md §2.7), *not*
    Modbus CRC-16: each step computes ``(crc >> 8) ^ byte`` before the eight
    shift/xor-0xA001 rounds. A consequence is that only 256 distinct values exist.

    Args:
        data: The data segment bytes (not ``##``, not the length, not CRLF).

    Returns:
        The CRC as an integer 0..0xFFFF, printed high byte first on the wire.
    """
    crc = 0xFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def frame(segment: str) -> bytes:
    """Wrap a data segment into a wire frame ``##LLLL<segment>CCCC\\r\\n``.

    The CRC is emitted as 4 upper-case, zero-padded hex digits (docs/standards.md §2.1).

    Args:
        segment: The data segment text (ASCII).

    Returns:
        The frame bytes.

    Raises:
        DecodeError: ``too_large`` if the segment exceeds 1024 bytes, ``bad_segment``
            if it is not ASCII. (Either would be undecodable on the other side.)
    """
    try:
        data = segment.encode("ascii")
    except UnicodeEncodeError:
        raise DecodeError("bad_segment", "data segment must be ASCII") from None
    if len(data) > MAX_SEGMENT_LEN:
        raise DecodeError("too_large", f"data segment is {len(data)} bytes, limit {MAX_SEGMENT_LEN}")
    return b"%s%04d%s%04X%s" % (_HEADER, len(data), data, crc16(data), _TRAILER)


# --- Packets -------------------------------------------------------------------------------------------


def _bad_field(name: str, value: object, expected: str) -> DecodeError:
    return DecodeError("bad_field", f"{name}={value!r}: expected {expected}")


@dataclass(frozen=True, slots=True)
class Hj212Packet:
    """One HJ 212 data segment, fields as on the wire.

    Field formats are validated on construction (HJ 212-2017, standards
    reference §2.2); size limits are not, because a packet merged by
    :class:`Reassembler` may legitimately exceed them. :func:`encode` checks sizes.

    Attributes:
        qn: Request id ``yyyyMMddHHmmssSSS`` (17 digits), or ``""`` when absent
            (some upload packets omit it).
        st: 2-digit system code (21 water, 22 air, 23 noise, 91 system interaction …).
        cn: 4-digit command code.
        pw: Access password, 0–6 alphanumerics.
        mn: Device id, 1–24 alphanumerics.
        flag: 0..255; bit0 ack wanted, bit1 split, bits 2–7 protocol version.
        pnum: Total packets of a split message (present iff the split bit is set).
        pno: This packet's number, 1..pnum.
        cp: CP items ``(key, value)`` in wire order; ``;`` versus ``,`` separators are
            not kept (:func:`encode` joins sub-items of one factor with ``,``).

    Raises:
        DecodeError: ``bad_field`` naming the offending field.
    """

    qn: str
    st: str
    cn: str
    pw: str
    mn: str
    flag: int
    pnum: int | None = None
    pno: int | None = None
    cp: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.qn, str) or (self.qn and not _QN_RE.fullmatch(self.qn)):
            raise _bad_field("QN", self.qn, "17 digits or absent")
        if not isinstance(self.st, str) or not _ST_RE.fullmatch(self.st):
            raise _bad_field("ST", self.st, "2 digits")
        if not isinstance(self.cn, str) or not _CN_RE.fullmatch(self.cn):
            raise _bad_field("CN", self.cn, "4 digits")
        if not isinstance(self.pw, str) or not _PW_RE.fullmatch(self.pw):
            raise _bad_field("PW", self.pw, "0-6 alphanumerics")
        if not isinstance(self.mn, str) or not _MN_RE.fullmatch(self.mn):
            raise _bad_field("MN", self.mn, "1-24 alphanumerics")
        if isinstance(self.flag, bool) or not isinstance(self.flag, int) or not 0 <= self.flag <= 255:
            raise _bad_field("Flag", self.flag, "an integer 0..255")
        self._validate_split()
        self._validate_cp()

    def _validate_split(self) -> None:
        if not self.is_split:
            if self.pnum is not None or self.pno is not None:
                raise _bad_field("PNUM", self.pnum, "absent when the Flag split bit is clear")
            return
        for name, part in (("PNUM", self.pnum), ("PNO", self.pno)):
            if part is None:
                raise _bad_field(name, part, "present when the Flag split bit is set")
            if isinstance(part, bool) or not isinstance(part, int) or not 1 <= part <= _MAX_PART:
                raise _bad_field(name, part, f"an integer 1..{_MAX_PART}")
        assert self.pnum is not None and self.pno is not None  # narrowed by the loop above
        if self.pno > self.pnum:
            raise _bad_field("PNO", self.pno, f"at most PNUM={self.pnum}")

    def _validate_cp(self) -> None:
        if not isinstance(self.cp, tuple):
            raise _bad_field("CP", self.cp, "a tuple of (key, value) pairs")
        for item in self.cp:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise _bad_field("CP", item, "a (key, value) pair")
            key, value = item
            if not isinstance(key, str) or not _CP_KEY_RE.fullmatch(key):
                raise _bad_field("CP", key, "a key 'name' or 'code-Field'")
            if not isinstance(value, str) or not _CP_VALUE_RE.fullmatch(value):
                raise _bad_field("CP", f"{key}={value}", "printable ASCII without ; , &")

    @property
    def needs_ack(self) -> bool:
        """Flag bit0 (A): the sender wants an answer (docs/standards.md §2.2)."""
        return bool(self.flag & _FLAG_ACK)

    @property
    def is_split(self) -> bool:
        """Flag bit1 (D): one part of a split message, PNUM/PNO present."""
        return bool(self.flag & _FLAG_SPLIT)

    @property
    def version_2017(self) -> bool:
        """Flag bits 2–7 equal 000001, i.e. HJ 212-2017 (000000 would be HJ/T 212-2005)."""
        return self.flag >> _FLAG_VERSION_SHIFT == _VERSION_2017


@dataclass(frozen=True, slots=True)
class Hj212Value:
    """One factor sub-item of CP, e.g. ``a34004-Rtd=35.2``.

    Attributes:
        code: Factor code (``a34004``, ``w01001``, ``LA`` …), HJ 212-2017 附录B.
        field: Sub-item: ``Rtd``, ``Avg``, ``Min``, ``Max``, ``Flag``, ``Cou``, ``ZsRtd``,
            ``Data``, ``DayData``, ``NightData`` … (docs/standards.md §2.2).
        value: The value text as sent.
    """

    code: str
    field: str
    value: str


# --- Segment parsing and encoding -------------------------------------------------------------------


def _parse_header(header: str) -> dict[str, str]:
    if not header.endswith(";"):
        raise DecodeError("bad_segment", "header fields must end with ';' before CP=&&")
    fields: list[tuple[str, str]] = []
    for token in header[:-1].split(";"):
        key, sep, value = token.partition("=")
        if not sep:
            raise DecodeError("bad_segment", f"header item {token[:32]!r} is not key=value")
        fields.append((key, value))
    keys = tuple(key for key, _ in fields)
    # Strict field order of HJ 212-2017 (docs/standards.md §2.2); QN may be missing in some uploads.
    core = keys[1:] if keys[:1] == ("QN",) else keys
    if core not in (_HEADER_KEYS, _HEADER_KEYS + _SPLIT_KEYS):
        raise DecodeError("bad_segment", _header_problem(core, keys))
    return dict(fields)


def _header_problem(core: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """Why a header's keys are not those of HJ 212-2017: a missing, unknown or repeated field, or the order."""
    sent = ",".join(k[:8] for k in keys[:12])
    missing = [k for k in _HEADER_KEYS if k not in core]
    if any(k in core for k in _SPLIT_KEYS):
        missing += [k for k in _SPLIT_KEYS if k not in core]
    if missing:
        return f"header field{'s' if len(missing) > 1 else ''} {','.join(missing)} missing (sent {sent})"
    unknown = [k[:8] for k in core if k not in _HEADER_KEYS + _SPLIT_KEYS + ("QN",)]
    if unknown:
        return f"header field{'s' if len(unknown) > 1 else ''} {','.join(unknown[:4])} not allowed (sent {sent})"
    repeated = sorted({k for k in core if core.count(k) > 1})
    if repeated:
        return f"header field{'s' if len(repeated) > 1 else ''} {','.join(repeated)} given more than once"
    return f"header fields {sent} out of order"


def _parse_cp(body: str) -> tuple[tuple[str, str], ...]:
    if not body:
        return ()
    items: list[tuple[str, str]] = []
    # ';' separates factors, ',' sub-items of one factor; both are item boundaries.
    for group in body.split(";"):
        for item in group.split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise DecodeError("bad_segment", f"CP item {item[:32]!r} is not key=value")
            items.append((key, value))
    return tuple(items)


def parse_segment(segment: bytes) -> Hj212Packet:
    """Parse a data segment (the bytes between ``LLLL`` and ``CCCC``).

    Parsing is strict (HJ 212-2017, docs/standards.md §2.2): header
    fields in the standard order, ST 2 digits, CN 4 digits, QN 17 digits or
    absent, PW 0–6 and MN 1–24 alphanumerics, Flag 0..255, PNUM/PNO exactly
    when the split bit is set, CP at most 950 characters. Only printable ASCII
    is accepted.

    Args:
        segment: The data segment bytes.

    Returns:
        The packet.

    Raises:
        DecodeError: on any malformed input (and nothing else): ``too_large``,
            ``bad_segment`` (structure), ``bad_field`` (a field value).
    """
    if len(segment) > MAX_SEGMENT_LEN:
        raise DecodeError("too_large", f"data segment is {len(segment)} bytes, limit {MAX_SEGMENT_LEN}")
    try:
        text = segment.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("bad_segment", "data segment is not ASCII") from None
    if not _PRINTABLE_RE.fullmatch(text):
        raise DecodeError("bad_segment", "data segment contains control characters")
    cp_at = text.find(_CP_OPEN)
    body_at = cp_at + len(_CP_OPEN)
    if cp_at < 0 or not text.endswith(_CP_CLOSE) or len(text) - len(_CP_CLOSE) < body_at:
        raise DecodeError("bad_segment", "missing CP=&&…&&")
    body = text[body_at : len(text) - len(_CP_CLOSE)]
    if len(body) > MAX_CP_LEN:
        raise DecodeError("too_large", f"CP is {len(body)} characters, limit {MAX_CP_LEN}")
    fields = _parse_header(text[:cp_at])
    flag_text = fields["Flag"]
    if not _FLAG_TEXT_RE.fullmatch(flag_text):
        raise _bad_field("Flag", flag_text, "an integer 0..255")
    parts: list[int | None] = []
    for name in _SPLIT_KEYS:
        part_text = fields.get(name)
        if part_text is not None and not _PART_TEXT_RE.fullmatch(part_text):
            raise _bad_field(name, part_text, "1-4 digits")
        parts.append(None if part_text is None else int(part_text))
    return Hj212Packet(
        qn=fields.get("QN", ""),
        st=fields["ST"],
        cn=fields["CN"],
        pw=fields["PW"],
        mn=fields["MN"],
        flag=int(flag_text),
        pnum=parts[0],
        pno=parts[1],
        cp=_parse_cp(body),
    )


def _factor_code(key: str) -> str | None:
    code, sep, _ = key.partition("-")
    return code if sep else None


def _cp_body(items: Iterable[tuple[str, str]]) -> str:
    out: list[str] = []
    previous: str | None = None
    for key, value in items:
        code = _factor_code(key)
        if out:
            # Sub-items of the same factor are ','-joined, everything else ';' (docs/standards.md §2.2).
            out.append("," if code is not None and code == previous else ";")
        out.append(f"{key}={value}")
        previous = code
    return "".join(out)


def _segment_text(packet: Hj212Packet) -> str:
    parts = [f"QN={packet.qn};"] if packet.qn else []
    parts.append(
        f"ST={packet.st};CN={packet.cn};PW={packet.pw};MN={packet.mn};Flag={packet.flag};",
    )
    if packet.pnum is not None:
        parts.append(f"PNUM={packet.pnum};PNO={packet.pno};")
    body = _cp_body(packet.cp)
    if len(body) > MAX_CP_LEN:
        raise DecodeError("too_large", f"CP is {len(body)} characters, limit {MAX_CP_LEN}")
    parts.append(f"{_CP_OPEN}{body}{_CP_CLOSE}")
    return "".join(parts)


def encode(packet: Hj212Packet) -> bytes:
    """Encode a packet as a complete frame; the inverse of :func:`decode`.

    Args:
        packet: The packet.

    Returns:
        ``##LLLL…CCCC\\r\\n`` bytes.

    Raises:
        DecodeError: ``too_large`` if CP exceeds 950 characters or the segment
            1024 bytes (e.g. a merged split message); the peer could not decode it.
    """
    return frame(_segment_text(packet))


def decode(data: bytes) -> Hj212Packet:
    """Decode exactly one full frame ``##LLLL<segment>CCCC\\r\\n``.

    Args:
        data: The frame bytes, nothing before or after.

    Returns:
        The packet.

    Raises:
        DecodeError: ``bad_header``, ``bad_length``, ``too_large``, ``bad_crc`` or
            any :func:`parse_segment` reason (and nothing else).
    """
    if not data.startswith(_HEADER) or not data.endswith(_TRAILER):
        raise DecodeError("bad_header", "a frame starts with ## and ends with CRLF")
    length_field = data[2:_PREFIX_LEN]
    if not _DIGITS4_RE.fullmatch(length_field):
        raise DecodeError("bad_length", f"length field {length_field!r} is not 4 digits")
    length = int(length_field)
    if length > MAX_SEGMENT_LEN:
        raise DecodeError("too_large", f"length field {length} exceeds {MAX_SEGMENT_LEN}")
    if len(data) != _PREFIX_LEN + length + _SUFFIX_LEN:
        raise DecodeError("bad_length", f"length field {length} does not match the frame")
    segment = data[_PREFIX_LEN : _PREFIX_LEN + length]
    _check_crc(segment, data[_PREFIX_LEN + length : _PREFIX_LEN + length + 4])
    return parse_segment(segment)


def _check_crc(segment: bytes, crc_field: bytes) -> None:
    # Published examples use both upper- and lower-case hex, so compare numerically.
    if not _HEX4_RE.fullmatch(crc_field):
        raise DecodeError("bad_crc", f"CRC field {crc_field!r} is not 4 hex digits")
    expected = crc16(segment)
    if int(crc_field, 16) != expected:
        raise DecodeError("bad_crc", f"CRC {crc_field.decode('ascii')} != {expected:04X}")


# --- Incremental framing ------------------------------------------------------------------------------


class FrameDecoder:
    """Incremental framer for one connection's byte stream.

    Frames may arrive split across reads or several in one read. Bytes that are
    not part of a frame are skipped by scanning for the next ``##``; each
    problem is returned in the result list rather than raised, so the connection
    keeps going.

    A run of garbage (anything between two well-framed frames) is reported once,
    by its first error, so a noisy line cannot flood the caller with errors. A
    well-framed frame whose CRC is wrong is always reported (``bad_crc``).

    The internal buffer is bounded by ``max_buffer``: incoming data is taken in
    slices so the buffer never exceeds it, and the unconsumed remainder is at most
    one incomplete frame (< :data:`MAX_FRAME_LEN` bytes) because everything else
    is either decoded or discarded as garbage at once.

    Args:
        max_buffer: Upper bound of the internal buffer in bytes (at least
            :data:`MAX_FRAME_LEN`, so a maximal frame fits).
    """

    def __init__(self, max_buffer: int = 8192) -> None:
        if max_buffer < MAX_FRAME_LEN:
            raise ValueError(f"max_buffer must be at least {MAX_FRAME_LEN}")
        self._max_buffer = max_buffer
        self._buf = bytearray()
        self._in_garbage = False

    @property
    def pending_bytes(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | DecodeError]:
        """Add bytes from the connection and return what they completed.

        Args:
            data: The bytes just read.

        Returns:
            In stream order: the data segment (bytes between ``LLLL`` and ``CCCC``,
            CRC already checked) of each complete frame, or a :class:`DecodeError`
            (``bad_header``, ``bad_length``, ``too_large``, ``bad_crc``) for each
            problem found. Parse segments with :func:`parse_segment`.
        """
        out: list[bytes | DecodeError] = []
        view = memoryview(data)
        while view:
            room = self._max_buffer - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            self._drain(out)
        return out

    def _garbage(self, out: list[bytes | DecodeError], reason: str, detail: str) -> None:
        if not self._in_garbage:
            out.append(DecodeError(reason, detail))
            self._in_garbage = True

    def _drain(self, out: list[bytes | DecodeError]) -> None:
        buf = self._buf
        while True:
            start = buf.find(_HEADER)
            if start < 0:
                # Keep a trailing '#': it may be the first half of the next header.
                junk = len(buf) - (1 if buf.endswith(b"#") else 0)
                if junk:
                    self._garbage(out, "bad_header", f"{junk} bytes outside any frame")
                    del buf[:junk]
                return
            if start:
                self._garbage(out, "bad_header", f"{start} bytes before ##")
                del buf[:start]
            # Check the digits as they arrive, so "###…" is rejected without waiting.
            length_field = bytes(buf[2:_PREFIX_LEN])
            if length_field and not length_field.isdigit():
                self._garbage(out, "bad_length", f"length field {length_field!r} is not 4 digits")
                del buf[:1]  # only one byte: the next '#' may start a real header
                continue
            if len(buf) < _PREFIX_LEN:
                return
            length = int(length_field)
            if length > MAX_SEGMENT_LEN:
                self._garbage(out, "too_large", f"length field {length} exceeds {MAX_SEGMENT_LEN}")
                del buf[:1]
                continue
            # A stray "##dddd" in garbage would otherwise make us wait for up to 1 KiB
            # before noticing; every real segment starts with QN= or ST= (docs/standards.md §2.2).
            head = bytes(buf[_PREFIX_LEN : _PREFIX_LEN + 3])
            if not any(start_.startswith(head) for start_ in _SEGMENT_STARTS):
                self._garbage(out, "bad_header", "segment does not start with QN= or ST=")
                del buf[:1]
                continue
            total = _PREFIX_LEN + length + _SUFFIX_LEN
            if len(buf) < total:
                return
            if buf[total - len(_TRAILER) : total] != _TRAILER:
                self._garbage(out, "bad_length", f"no CRLF where length field {length} puts it")
                del buf[:1]
                continue
            segment = bytes(buf[_PREFIX_LEN : _PREFIX_LEN + length])
            crc_field = bytes(buf[_PREFIX_LEN + length : _PREFIX_LEN + length + 4])
            del buf[:total]
            self._in_garbage = False
            try:
                _check_crc(segment, crc_field)
            except DecodeError as exc:
                out.append(exc)
                continue
            out.append(segment)


# --- CP interpretation ----------------------------------------------------------------------------------


def _parse_cp_time(name: str, value: str) -> datetime:
    if not _CP_TIME_RE.fullmatch(value):
        raise _bad_field(name, value, "yyyyMMddHHmmss")
    try:
        return datetime(
            int(value[0:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[8:10]),
            int(value[10:12]),
            int(value[12:14]),
        )
    except ValueError:
        raise _bad_field(name, value, "a valid yyyyMMddHHmmss time") from None


def factor_values(packet: Hj212Packet) -> list[Hj212Value]:
    """The factor sub-items (``code-Field=value``) of CP, in wire order.

    Args:
        packet: The packet.

    Returns:
        One :class:`Hj212Value` per factor sub-item; parameters such as
        ``DataTime`` are left out (see :func:`cp_params`).
    """
    out: list[Hj212Value] = []
    for key, value in packet.cp:
        code, sep, sub = key.partition("-")
        if sep:
            out.append(Hj212Value(code=code, field=sub, value=value))
    return out


def cp_params(packet: Hj212Packet) -> dict[str, str]:
    """The non-factor CP items (``DataTime``, ``RtdInterval``, ``QnRtn``, ``ExeRtn``, ``SystemTime`` …).

    Args:
        packet: The packet.

    Returns:
        Key → value; if a key repeats (a merged split message), the last one wins.
    """
    return {key: value for key, value in packet.cp if _factor_code(key) is None}


def cp_values(packet: Hj212Packet) -> list[tuple[datetime | None, str, dict[str, str]]]:
    """Group CP factor sub-items by factor and record time.

    The record time is ``DataTime=yyyyMMddHHmmss`` (docs/standards.md §2.2), a naive
    device-local time. With one ``DataTime`` it applies to every factor wherever
    it appears; with several (a merged split message, or a history upload of
    several records) each applies to the factors after it, and factors before
    the first get ``None``.

    Args:
        packet: The packet.

    Returns:
        ``(time, code, {field: value})`` in order of first appearance; a repeated
        sub-item of one factor and time keeps the last value.

    Raises:
        DecodeError: ``bad_field`` if a ``DataTime`` is not a valid time.
    """
    times = [_parse_cp_time(key, value) for key, value in packet.cp if key == "DataTime"]
    current: datetime | None = times[0] if len(times) == 1 else None
    sectioned = len(times) > 1
    groups: dict[tuple[datetime | None, str], dict[str, str]] = {}
    for key, value in packet.cp:
        if key == "DataTime":
            if sectioned:
                current = _parse_cp_time(key, value)
            continue
        code, sep, sub = key.partition("-")
        if sep:
            groups.setdefault((current, code), {})[sub] = value
    return [(when, code, fields) for (when, code), fields in groups.items()]


@dataclass(frozen=True, slots=True)
class DecodedData:
    """Result of :func:`to_readings`.

    Attributes:
        readings: The readings, in CP order.
        unknown_codes: Factor codes that had values but no entry in
            ``metric_for_code`` (skipped), in order of first appearance.
    """

    readings: tuple[Reading, ...] = ()
    unknown_codes: tuple[str, ...] = ()


# Which sub-item carries the value for each data upload, and the metric suffix of the
# extra sub-items (docs/standards.md §2.2/§2.4). Noise sub-items (-Data, -DayData,
# -NightData) are accepted in every data upload.
_PRIMARY_FIELD = {_CN_RTD: "Rtd", _CN_MINUTE: "Avg", _CN_HOUR: "Avg", _CN_DAY: "Avg"}
_AGGREGATE_EXTRAS = (("Min", "_min"), ("Max", "_max"), ("Cou", "_cou"))
_NOISE_PRIMARY = "Data"
_NOISE_EXTRAS = (("DayData", "_day"), ("NightData", "_night"))


def _number(code: str, sub: str, text: str) -> float:
    if not _NUMBER_RE.fullmatch(text):
        raise DecodeError("bad_value", f"{code}-{sub}={text[:32]!r} is not a number")
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise DecodeError("bad_value", f"{code}-{sub} is out of range")
    return number


def _local_to_utc(when: datetime, tz: tzinfo) -> datetime:
    try:
        return when.replace(tzinfo=tz).astimezone(UTC)
    except (OverflowError, ValueError):
        raise _bad_field("DataTime", when.isoformat(), "a time representable in UTC") from None


def to_readings(
    packet: Hj212Packet,
    *,
    device_code: str,
    received_at: datetime,
    tz: tzinfo,
    metric_for_code: Mapping[str, str],
    unit_for_code: Mapping[str, str] | None = None,
    cou_unit_for_code: Mapping[str, str] | None = None,
    interval_suffix: Mapping[str, str] | None = None,
) -> DecodedData:
    """Turn a data upload into canonical readings.

    * CN 2011 (real-time): ``code-Rtd`` → ``metric``.
    * CN 2051/2061/2031 (minute/hour/day): ``code-Avg`` → ``metric``, ``-Min`` →
      ``metric_min``, ``-Max`` → ``metric_max``, ``-Cou`` (discharge amount) →
      ``metric_cou``; with ``interval_suffix`` (pollution-source models) the metric
      is ``metric + suffix`` first, so ``w20111-Avg`` of a 2061 is ``hg_hour`` and
      its ``-Cou`` ``hg_hour_cou``.
    * Noise (any of these CNs): ``-Data`` → ``metric`` (when the primary sub-item
      above is absent), ``-DayData`` → ``metric_day``, ``-NightData`` → ``metric_night``.

    ``code-Flag`` sets the quality of all of that factor's readings through
    :data:`FLAG_QUALITY` (N good; D 故障, F 停运 bad; M, S, C, T, B suspect; an
    unknown letter is suspect) and is kept raw in :attr:`Reading.flag`; without a
    flag a reading is good. Other CNs (commands, replies, state uploads) carry no
    readings and give an empty result.

    Args:
        packet: A (reassembled) packet.
        device_code: Platform device code the connection resolved ``MN`` to.
        received_at: When the platform received the frame (aware UTC).
        tz: Time zone of ``DataTime`` on the device (callers pass Asia/Shanghai
            unless a device is configured otherwise).
        metric_for_code: Factor code → metric name (``a34004`` → ``pm25``, ``LA`` → ``noise_la``).
        unit_for_code: Factor code → unit; ``""`` where missing.
        cou_unit_for_code: Factor code → unit of its ``-Cou``; ``""`` where missing.
        interval_suffix: CN → metric suffix of interval data (``{"2061": "_hour"}``).

    Returns:
        The readings and the factor codes that were skipped as unknown.

    Raises:
        DecodeError: ``bad_value`` for a value that is not a finite decimal number,
            ``bad_field`` if ``DataTime`` is missing or invalid.
        RecordError: if the caller's ``device_code``, ``received_at`` or a mapped
            metric name is not valid for a :class:`Reading`.
    """
    primary = _PRIMARY_FIELD.get(packet.cn)
    if primary is None:
        return DecodedData()
    extras = _AGGREGATE_EXTRAS if packet.cn != _CN_RTD else ()
    units = unit_for_code or {}
    cou_units = cou_unit_for_code or {}
    suffix = (interval_suffix or {}).get(packet.cn, "")
    readings: list[Reading] = []
    unknown: dict[str, None] = {}
    for when, code, fields in cp_values(packet):
        metric = metric_for_code.get(code)
        if metric is None:
            unknown[code] = None
            continue
        metric += suffix
        wanted: list[tuple[str, str]] = []
        if primary in fields:
            wanted.append((primary, metric))
        elif _NOISE_PRIMARY in fields:
            wanted.append((_NOISE_PRIMARY, metric))
        wanted.extend((sub, metric + suffix) for sub, suffix in chain(extras, _NOISE_EXTRAS) if sub in fields)
        if not wanted:
            continue
        if when is None:
            raise _bad_field("DataTime", None, f"a DataTime before {code} values")
        event_time = _local_to_utc(when, tz)
        flag = fields.get("Flag")
        quality = Quality.GOOD if flag is None else FLAG_QUALITY.get(flag.upper(), Quality.SUSPECT)
        for sub, name in wanted:
            readings.append(
                Reading(
                    device_code=device_code,
                    metric=name,
                    event_time=event_time,
                    received_at=received_at,
                    value=_number(code, sub, fields[sub]),
                    unit=cou_units.get(code, "") if sub == "Cou" else units.get(code, ""),
                    quality=quality,
                    flag=flag,
                )
            )
    return DecodedData(readings=tuple(readings), unknown_codes=tuple(unknown))


# --- Replies and commands ---------------------------------------------------------------------------------


def make_qn(dt_local: datetime) -> str:
    """Format a request id ``yyyyMMddHHmmssSSS`` (17 digits, docs/standards.md §2.2).

    Args:
        dt_local: The time to encode, already in the device's local time.

    Returns:
        The QN text.
    """
    return (
        f"{dt_local.year:04d}{dt_local.month:02d}{dt_local.day:02d}"
        f"{dt_local.hour:02d}{dt_local.minute:02d}{dt_local.second:02d}{dt_local.microsecond // 1000:03d}"
    )


def _reply(request: Hj212Packet, cn: str, cp: tuple[tuple[str, str], ...]) -> bytes:
    # HJ 212-2017 replies echo the request's QN (so the device can match them), PW and
    # MN, and use ST=91 系统交互 (docs/standards.md §2.3) with Flag=4: version 2017,
    # ack bit clear, because a reply is never itself answered (§2.2).
    return encode(
        Hj212Packet(
            qn=request.qn,
            st=ST_SYSTEM_INTERACTION,
            cn=cn,
            pw=request.pw,
            mn=request.mn,
            flag=_FLAG_2017,
            cp=cp,
        )
    )


def _code(name: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return str(value)


def reply_9011(request: Hj212Packet, qn_rtn: int = 1) -> bytes:
    """Request answer (CN 9011, 请求应答) to a command that asked for one.

    Args:
        request: The request being answered.
        qn_rtn: QnRtn: 1 准备执行请求, 2 拒绝, 3 PW错误, 4 MN错误, 5 ST错误, 6 Flag错误,
            7 QN错误, 8 CN错误, 9 CRC错误, 100 未知错误 (docs/standards.md §2.4).

    Returns:
        The reply frame.
    """
    return _reply(request, CN_REQUEST_REPLY, (("QnRtn", _code("qn_rtn", qn_rtn)),))


def reply_9012(request: Hj212Packet, exe_rtn: int = 1) -> bytes:
    """Execution result (CN 9012, 执行结果) of a command.

    Args:
        request: The command that was executed.
        exe_rtn: ExeRtn: 1 成功, 2 失败原因不明, 3 条件错误, 4 超时, 5 系统繁忙,
            6 系统故障, 100 没有数据 (docs/standards.md §2.4).

    Returns:
        The reply frame.
    """
    return _reply(request, CN_EXECUTE_RESULT, (("ExeRtn", _code("exe_rtn", exe_rtn)),))


def reply_9014(request: Hj212Packet) -> bytes:
    """Data answer (CN 9014, 数据应答) to an upload whose Flag asked for one; CP is empty.

    Args:
        request: The upload being acknowledged.

    Returns:
        The reply frame.
    """
    return _reply(request, CN_DATA_ACK, ())


def command_set_rtd_interval(mn: str, pw: str, seconds: int, *, qn: str, st: str) -> bytes:
    """Command CN 1062 (设置实时数据间隔) with ``CP=&&RtdInterval=<seconds>&&``.

    Commands carry the target's system code and Flag=5 (HJ 212-2017, answer
    wanted), as in the HJ 212-2017 Appendix C example. The standard reportedly
    bounds RtdInterval to 30–3600 s [M, not confirmed]; only positivity is
    enforced here.

    Args:
        mn: Target device MN.
        pw: Device access password.
        seconds: New real-time upload interval in seconds.
        qn: Request id (see :func:`make_qn`); the device echoes it in its answers.
        st: The device's system code (e.g. ``"22"`` air, ``"32"`` in Appendix C).

    Returns:
        The command frame.

    Raises:
        ValueError: if ``seconds`` is not a positive integer.
        DecodeError: ``bad_field`` if mn, pw, qn or st is malformed.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise ValueError(f"seconds must be a positive integer, got {seconds!r}")
    return encode(
        Hj212Packet(
            qn=qn,
            st=st,
            cn=CN_SET_RTD_INTERVAL,
            pw=pw,
            mn=mn,
            flag=_FLAG_2017_ACK,
            cp=(("RtdInterval", str(seconds)),),
        )
    )


def command_set_time(
    mn: str,
    pw: str,
    when: datetime,
    tz: tzinfo,
    *,
    qn: str,
    st: str,
    pol_id: str | None = None,
) -> bytes:
    """Command CN 1012 (设置现场机时间) with ``CP=&&[PolId=…;]SystemTime=yyyyMMddHHmmss&&``.

    Args:
        mn: Target device MN.
        pw: Device access password.
        when: The time to set (timezone-aware).
        tz: The device's time zone; ``SystemTime`` is sent as local time in it.
        qn: Request id (see :func:`make_qn`).
        st: The device's system code.
        pol_id: Optional factor code of the instrument whose clock to set.

    Returns:
        The command frame.

    Raises:
        ValueError: if ``when`` is naive.
        DecodeError: ``bad_field`` if another argument is malformed.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("when must be timezone-aware")
    local = when.astimezone(tz)
    cp: tuple[tuple[str, str], ...] = (("SystemTime", f"{local:%Y%m%d%H%M%S}"),)
    if pol_id is not None:
        cp = (("PolId", pol_id), *cp)
    return encode(Hj212Packet(qn=qn, st=st, cn=CN_SET_TIME, pw=pw, mn=mn, flag=_FLAG_2017_ACK, cp=cp))


# --- Split messages ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Partial:
    pnum: int
    first_seen: float
    parts: dict[int, Hj212Packet]


class Reassembler:
    """Collects the parts of split messages (Flag bit1, PNUM/PNO) and merges them.

    Parts are keyed by (MN, QN, CN). When all PNUM parts are in, the merged packet
    has the CP items of the parts concatenated in PNO order, the split bit cleared
    and no PNUM/PNO. The number of pending messages is bounded: the oldest is
    dropped (and counted in :attr:`dropped`) to make room. Time is any monotonic
    clock in seconds, passed in so the class stays pure.

    Args:
        max_pending: Most incomplete messages kept at once.
        ttl_seconds: Age after which :meth:`expire` discards an incomplete message.

    Attributes:
        dropped: Incomplete messages evicted because ``max_pending`` was reached.
        expired: Incomplete messages discarded by :meth:`expire`.
    """

    def __init__(self, *, max_pending: int = 64, ttl_seconds: float = 120.0) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._max_pending = max_pending
        self._ttl = ttl_seconds
        self._pending: dict[tuple[str, str, str], _Partial] = {}
        self.dropped = 0
        self.expired = 0

    @property
    def pending(self) -> int:
        """Number of incomplete messages held."""
        return len(self._pending)

    def add(self, packet: Hj212Packet, now: float) -> Hj212Packet | None:
        """Offer a packet.

        Args:
            packet: Any decoded packet.
            now: Current monotonic time in seconds.

        Returns:
            The packet itself if it is not split, the merged packet if this part
            completed its message, else ``None``. A repeated part replaces the earlier copy.

        Raises:
            DecodeError: ``bad_split`` if the part's PNUM disagrees with earlier
                parts of the same message; the pending message is discarded.
        """
        if not packet.is_split:
            return packet
        assert packet.pnum is not None and packet.pno is not None  # guaranteed by Hj212Packet
        key = (packet.mn, packet.qn, packet.cn)
        partial = self._pending.get(key)
        if partial is None:
            if len(self._pending) >= self._max_pending:
                del self._pending[next(iter(self._pending))]  # dicts keep insertion order
                self.dropped += 1
            partial = self._pending[key] = _Partial(pnum=packet.pnum, first_seen=now, parts={})
        elif partial.pnum != packet.pnum:
            del self._pending[key]
            raise DecodeError("bad_split", f"PNUM {packet.pnum} != {partial.pnum} for MN={packet.mn}")
        partial.parts[packet.pno] = packet
        if len(partial.parts) < partial.pnum:
            return None
        del self._pending[key]
        ordered = [partial.parts[number] for number in range(1, partial.pnum + 1)]
        first = ordered[0]
        return Hj212Packet(
            qn=first.qn,
            st=first.st,
            cn=first.cn,
            pw=first.pw,
            mn=first.mn,
            flag=first.flag & ~_FLAG_SPLIT,
            cp=tuple(chain.from_iterable(part.cp for part in ordered)),
        )

    def expire(self, now: float) -> int:
        """Discard incomplete messages older than ``ttl_seconds``.

        Args:
            now: Current monotonic time in seconds (same clock as :meth:`add`).

        Returns:
            How many were discarded (also added to :attr:`expired`).
        """
        stale = [key for key, partial in self._pending.items() if now - partial.first_seen > self._ttl]
        for key in stale:
            del self._pending[key]
        self.expired += len(stale)
        return len(stale)
