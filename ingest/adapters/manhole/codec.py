"""Pure codec of the smart manhole cover (智能井盖) binary frame, version 1.

The frame follows the shape common to Chinese NB-IoT vendor frames (start byte
0x68, end byte 0x16, a length, a device identity and a frame counter; standards
reference §6.1) with a Milesight-style type-length-value body. Byte-by-byte
layout and examples: ``docs/manhole-frame.md``. In short (big-endian)::

    68 | ver 01 | len u16 | IMEI 15×ASCII | counter u16 | type u8 | time u32 | TLV… | CRC16 u16 | 16

Values are kept as the integers on the wire (0.1 °C, 0.1°, 0.1 %LEL, 0.1 ppm),
so ``decode(encode(frame)) == frame`` holds exactly, without float rounding.

Unknown TLV types are *skipped but kept* (:attr:`ManholeFrame.extra`): vendors
add fields in firmware updates and a new field must not make the whole frame
(and its alarm) undecodable. Structural problems are rejected with a
:class:`~ingest.errors.DecodeError` whose ``reason`` is one of ``too_large``,
``truncated``, ``bad_header``, ``bad_version``, ``bad_length``,
``bad_checksum``, ``bad_field``, ``bad_tlv``. :func:`decode` raises nothing
else, whatever bytes it is given.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.records import Reading
from ingest.errors import DecodeError

__all__ = [
    "ALARM_BITS",
    "END",
    "MAX_FRAME_LEN",
    "MIN_FRAME_LEN",
    "START",
    "VERSION",
    "FrameType",
    "ManholeFrame",
    "checksum",
    "decode",
    "encode",
    "to_readings",
]

START = 0x68
END = 0x16
VERSION = 0x01
#: NB-IoT uplinks are small; 512 bytes leaves room for ~100 TLVs and bounds the work per frame.
MAX_FRAME_LEN = 512
_IMEI_LEN = 15
# start, version, length | IMEI, counter, type, time | CRC, end
_PREFIX = struct.Struct(">BBH")
_FIXED = struct.Struct(">15sHBI")
_SUFFIX_LEN = 3
#: Bytes counted by the length field without any TLV (IMEI + counter + type + time).
_FIXED_BODY = _FIXED.size
MIN_FRAME_LEN = _PREFIX.size + _FIXED_BODY + _SUFFIX_LEN


class FrameType(enum.IntEnum):
    """Why the device sent the frame (docs/standards.md §6.1: periodic, alarm, recovery)."""

    PERIODIC = 1
    ALARM = 2
    RECOVERY = 3
    HEARTBEAT = 4


#: Alarm bit flags (TLV 0x08). Bits 0x01–0x40 follow the vendor protocol quoted in standards
#: reference §6.1; 0x80 (tilt) and 0x100 (H2S) are this frame's additions.
ALARM_BITS: Mapping[str, int] = {
    "temperature_high": 0x01,
    "ch4_high": 0x02,
    "water_high": 0x04,
    "lid_opened": 0x08,
    "lid_battery_low": 0x10,
    "sensor_battery_low": 0x20,
    "periodic": 0x40,
    "tilt": 0x80,
    "h2s_high": 0x100,
}

# TLV type → (frame attribute, struct format of the value).
_T_BATTERY = 0x01
_T_TEMPERATURE = 0x02
_T_WATER_DISTANCE = 0x03
_T_TILT = 0x04
_T_LID_OPEN = 0x05
_T_CH4 = 0x06
_T_H2S = 0x07
_T_ALARMS = 0x08
_T_RSSI = 0x09
_TLVS: Mapping[int, tuple[str, struct.Struct]] = {
    _T_BATTERY: ("battery", struct.Struct(">B")),
    _T_TEMPERATURE: ("temperature_dc", struct.Struct(">h")),
    _T_WATER_DISTANCE: ("water_distance_mm", struct.Struct(">H")),
    _T_TILT: ("tilt_dd", struct.Struct(">H")),
    _T_LID_OPEN: ("lid_open", struct.Struct(">B")),
    _T_CH4: ("ch4_dlel", struct.Struct(">H")),
    _T_H2S: ("h2s_dppm", struct.Struct(">H")),
    _T_ALARMS: ("alarms", struct.Struct(">H")),
    _T_RSSI: ("rssi_dbm", struct.Struct(">b")),
}
_RANGES: Mapping[str, tuple[int, int]] = {
    "battery": (0, 0xFF),
    "temperature_dc": (-0x8000, 0x7FFF),
    "water_distance_mm": (0, 0xFFFF),
    "tilt_dd": (0, 0xFFFF),
    "ch4_dlel": (0, 0xFFFF),
    "h2s_dppm": (0, 0xFFFF),
    "alarms": (0, 0xFFFF),
    "rssi_dbm": (-128, 127),
}


def checksum(data: bytes) -> int:
    """CRC-16/MODBUS (reflected poly 0xA001, init 0xFFFF) of ``data``.

    Chosen over the additive checksum of older 0x68 frames because a single sum
    byte misses swapped and paired errors; the check value of ``b"123456789"`` is 0x4B37.
    """
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _bad(name: str, value: object, expected: str) -> DecodeError:
    return DecodeError("bad_field", f"{name}={value!r}: expected {expected}")


@dataclass(frozen=True, slots=True)
class ManholeFrame:
    """One decoded manhole frame; ``None`` means the TLV was absent.

    Attributes:
        imei: Device IMEI, 15 ASCII digits (the NB-IoT module's identity).
        counter: Frame counter 0..65535, wraps; lets the platform see gaps and repeats.
        frame_type: Periodic, alarm, recovery or heartbeat.
        device_time: Device clock, epoch seconds UTC; 0 when the device has no time yet.
        battery: Battery charge, % (TLV 0x01).
        temperature_dc: Temperature in 0.1 °C (TLV 0x02).
        water_distance_mm: Distance from the sensor down to the water surface, mm (TLV 0x03).
        tilt_dd: Tilt of the cover against its installed position, 0.1° (TLV 0x04).
        lid_open: Lid open (TLV 0x05, 0 or 1).
        ch4_dlel: Methane in 0.1 %LEL (TLV 0x06).
        h2s_dppm: Hydrogen sulphide in 0.1 ppm (TLV 0x07).
        alarms: Alarm bit flags, see :data:`ALARM_BITS` (TLV 0x08).
        rssi_dbm: Signal strength, dBm (TLV 0x09).
        extra: Unknown TLVs ``(type, value)``, in wire order, kept for forward compatibility.

    Raises:
        DecodeError: ``bad_field`` if a value cannot be represented on the wire.
    """

    imei: str
    counter: int
    frame_type: FrameType = FrameType.PERIODIC
    device_time: int = 0
    battery: int | None = None
    temperature_dc: int | None = None
    water_distance_mm: int | None = None
    tilt_dd: int | None = None
    lid_open: bool | None = None
    ch4_dlel: int | None = None
    h2s_dppm: int | None = None
    alarms: int | None = None
    rssi_dbm: int | None = None
    extra: tuple[tuple[int, bytes], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.imei, str) or len(self.imei) != _IMEI_LEN or not self.imei.isascii():
            raise _bad("imei", self.imei, "15 ASCII digits")
        if not self.imei.isdigit():
            raise _bad("imei", self.imei, "15 ASCII digits")
        if not _is_int(self.counter) or not 0 <= self.counter <= 0xFFFF:
            raise _bad("counter", self.counter, "0..65535")
        if not isinstance(self.frame_type, FrameType):
            raise _bad("frame_type", self.frame_type, "a FrameType")
        if not _is_int(self.device_time) or not 0 <= self.device_time <= 0xFFFFFFFF:
            raise _bad("device_time", self.device_time, "0..2^32-1 epoch seconds")
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not low <= value <= high):
                raise _bad(name, value, f"an integer {low}..{high}")
        if self.lid_open is not None and not isinstance(self.lid_open, bool):
            raise _bad("lid_open", self.lid_open, "a bool")
        if not isinstance(self.extra, tuple):
            raise _bad("extra", self.extra, "a tuple of (type, bytes)")
        for item in self.extra:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise _bad("extra", item, "a (type, bytes) pair")
            kind, value = item
            if not _is_int(kind) or not 0 <= kind <= 0xFF or kind in _TLVS:
                raise _bad("extra", kind, "an unknown TLV type 0..255")
            if not isinstance(value, bytes) or len(value) > 0xFF:
                raise _bad("extra", value, "at most 255 bytes")

    @property
    def temperature(self) -> float | None:
        """Temperature in °C."""
        return None if self.temperature_dc is None else self.temperature_dc / 10

    @property
    def tilt(self) -> float | None:
        """Tilt in degrees."""
        return None if self.tilt_dd is None else self.tilt_dd / 10

    @property
    def ch4(self) -> float | None:
        """Methane in %LEL."""
        return None if self.ch4_dlel is None else self.ch4_dlel / 10

    @property
    def h2s(self) -> float | None:
        """Hydrogen sulphide in ppm."""
        return None if self.h2s_dppm is None else self.h2s_dppm / 10

    def alarm_names(self) -> tuple[str, ...]:
        """Names of the alarm bits that are set, in :data:`ALARM_BITS` order."""
        bits = self.alarms or 0
        return tuple(name for name, bit in ALARM_BITS.items() if bits & bit)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode(frame: ManholeFrame) -> bytes:
    """Encode a frame; the inverse of :func:`decode`.

    Known TLVs are written in type order, then :attr:`ManholeFrame.extra` in its order.

    Args:
        frame: The frame.

    Returns:
        The wire bytes.

    Raises:
        DecodeError: ``too_large`` if the frame would exceed :data:`MAX_FRAME_LEN`.
    """
    body = bytearray(_FIXED.pack(frame.imei.encode("ascii"), frame.counter, frame.frame_type, frame.device_time))
    for kind, (name, fmt) in _TLVS.items():
        value = getattr(frame, name)
        if value is not None:
            body += bytes((kind, fmt.size)) + fmt.pack(int(value))
    for kind, raw in frame.extra:
        body += bytes((kind, len(raw))) + raw
    if len(body) + _PREFIX.size + _SUFFIX_LEN > MAX_FRAME_LEN:
        raise DecodeError("too_large", f"frame would be {len(body) + 7} bytes, limit {MAX_FRAME_LEN}")
    head = _PREFIX.pack(START, VERSION, len(body)) + body
    return head + checksum(head).to_bytes(2, "big") + bytes((END,))


def decode(data: bytes) -> ManholeFrame:
    """Decode exactly one frame.

    Args:
        data: The frame bytes, nothing before or after.

    Returns:
        The frame.

    Raises:
        DecodeError: see the module docstring for the reasons (and nothing else).
    """
    n = len(data)
    if n > MAX_FRAME_LEN:
        raise DecodeError("too_large", f"{n} bytes, limit {MAX_FRAME_LEN}")
    if n < MIN_FRAME_LEN:
        raise DecodeError("truncated", f"{n} bytes, a frame has at least {MIN_FRAME_LEN}")
    start, version, length = _PREFIX.unpack_from(data, 0)
    if start != START:
        raise DecodeError("bad_header", f"start byte 0x{start:02x}, expected 0x{START:02x}")
    if version != VERSION:
        raise DecodeError("bad_version", f"version {version}, this codec reads {VERSION}")
    total = _PREFIX.size + length + _SUFFIX_LEN
    if total > MAX_FRAME_LEN:
        raise DecodeError("too_large", f"length field {length} gives {total} bytes, limit {MAX_FRAME_LEN}")
    if length < _FIXED_BODY:
        raise DecodeError("bad_length", f"length field {length} < {_FIXED_BODY}")
    if n < total:
        raise DecodeError("truncated", f"{n} bytes, the length field announces {total}")
    if n > total:
        raise DecodeError("bad_length", f"{n - total} bytes after the announced end")
    if data[-1] != END:
        raise DecodeError("bad_header", f"end byte 0x{data[-1]:02x}, expected 0x{END:02x}")
    sent = int.from_bytes(data[-3:-1], "big")
    expected = checksum(data[:-3])
    if sent != expected:
        raise DecodeError("bad_checksum", f"CRC {sent:04X} != {expected:04X}")
    imei_raw, counter, kind, device_time = _FIXED.unpack_from(data, _PREFIX.size)
    if not imei_raw.isdigit():
        raise _bad("imei", imei_raw[:15], "15 ASCII digits")
    try:
        frame_type = FrameType(kind)
    except ValueError:
        raise _bad("frame_type", kind, "1 periodic, 2 alarm, 3 recovery, 4 heartbeat") from None
    values, extra = _tlvs(data, _PREFIX.size + _FIXED_BODY, n - _SUFFIX_LEN)
    lid = values.pop("lid_open", None)
    return ManholeFrame(
        imei=imei_raw.decode("ascii"),
        counter=counter,
        frame_type=frame_type,
        device_time=device_time,
        lid_open=None if lid is None else bool(lid),
        extra=tuple(extra),
        **values,
    )


def _tlvs(data: bytes, pos: int, end: int) -> tuple[dict[str, int], list[tuple[int, bytes]]]:
    values: dict[str, int] = {}
    extra: list[tuple[int, bytes]] = []
    while pos < end:
        if pos + 2 > end:
            raise DecodeError("bad_tlv", f"TLV header at offset {pos} runs past the body")
        kind, size = data[pos], data[pos + 1]
        pos += 2
        if pos + size > end:
            raise DecodeError("bad_tlv", f"TLV 0x{kind:02x} of {size} bytes runs past the body")
        raw = data[pos : pos + size]
        pos += size
        spec = _TLVS.get(kind)
        if spec is None:
            extra.append((kind, bytes(raw)))
            continue
        name, fmt = spec
        if size != fmt.size:
            raise DecodeError("bad_tlv", f"TLV 0x{kind:02x} ({name}) has {size} bytes, expected {fmt.size}")
        if name in values:
            raise DecodeError("bad_tlv", f"TLV 0x{kind:02x} ({name}) repeated")
        (value,) = fmt.unpack(raw)
        if kind == _T_LID_OPEN and value not in (0, 1):
            raise DecodeError("bad_tlv", f"lid_open={value}, expected 0 or 1")
        values[name] = value
    return values, extra


# Frame attribute → (metric of devices/data/models/manhole-cover.yaml, canonical unit, scale).
_METRICS: tuple[tuple[str, str, str, float], ...] = (
    ("tilt_dd", "tilt", "deg", 0.1),
    ("lid_open", "lid_open", "1", 1.0),
    ("water_distance_mm", "water_distance", "mm", 1.0),
    ("ch4_dlel", "ch4", "%", 0.1),
    ("h2s_dppm", "h2s", "ppm", 0.1),
    ("temperature_dc", "temperature", "degC", 0.1),
    ("battery", "battery", "%", 1.0),
    ("rssi_dbm", "rssi", "dBm", 1.0),
)


def to_readings(frame: ManholeFrame, device_code: str, received_at: datetime) -> list[Reading]:
    """Readings of a frame, named as in the ``manhole-cover`` model.

    The event time is the device clock when it has one (``device_time`` != 0),
    else the receive time: NB-IoT devices may report before they get network time.
    Alarm flags are not readings (the rules derive alarms from the values); they stay
    on the frame.

    Args:
        frame: The decoded frame.
        device_code: The device's platform code.
        received_at: When the platform received the frame (aware UTC).

    Returns:
        One reading per TLV present, in model order.

    Raises:
        RecordError: if ``device_code`` or ``received_at`` is not valid for a reading.
    """
    event_time = datetime.fromtimestamp(frame.device_time, tz=UTC) if frame.device_time else received_at
    out: list[Reading] = []
    for attr, metric, unit, scale in _METRICS:
        value = getattr(frame, attr)
        if value is None:
            continue
        number = float(value) if scale == 1.0 else round(int(value) * scale, 1)
        out.append(Reading(device_code, metric, event_time, received_at, number, unit))
    return out
