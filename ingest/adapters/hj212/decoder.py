"""Stream-side decoder of HJ 212 raw messages: ``decode_hj212(raw, dev, model)``.

Registered in ``streams.normalise`` under the adapter name ``hj212``. The raw
payload is what the connector forwarded: one frame, or for a split message
(PNUM/PNO) all its frames concatenated in PNO order, each byte-for-byte a
valid frame. They are re-framed, re-checked and reassembled here, so the
Kafka record keeps wire bytes and the stream side needs no state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from zoneinfo import ZoneInfo

from core.records import RawMessage, Reading
from devices.index import DeviceInfo
from devices.models import DeviceModel
from ingest.adapters.hj212.codec import (
    MAX_FRAME_LEN,
    FrameDecoder,
    Hj212Packet,
    Reassembler,
    parse_segment,
    to_readings,
)
from ingest.adapters.hj212.units import cou_units, wire_units
from ingest.errors import DecodeError

__all__ = ["ADAPTER", "decode_hj212", "make_hj212_decoder", "packet_of"]

ADAPTER = "hj212"
#: Device-local zone of ``DataTime`` unless the device's ``timezone`` attribute says otherwise.
DEFAULT_TZ = ZoneInfo("Asia/Shanghai")

# A merged split message may be PNUM × 1036 bytes; the connector bounds PNUM the same way.
_MAX_PARTS = 64


def packet_of(payload: bytes) -> Hj212Packet:
    """The (reassembled) packet carried by a raw HJ 212 payload.

    Args:
        payload: One frame, or the frames of one split message in PNO order.

    Returns:
        The packet; for a split message the merged packet.

    Raises:
        DecodeError: a framing/CRC/segment reason of the codec, ``too_large`` for more than
            64 parts, or ``bad_split`` when the frames do not form exactly one message.
    """
    if len(payload) > _MAX_PARTS * MAX_FRAME_LEN:
        raise DecodeError("too_large", f"{len(payload)} bytes is more than {_MAX_PARTS} frames")
    framer = FrameDecoder(max_buffer=max(8192, MAX_FRAME_LEN))
    assembler = Reassembler(max_pending=1)
    done: list[Hj212Packet] = []
    items = framer.feed(payload)
    if framer.pending_bytes:
        raise DecodeError("bad_length", f"{framer.pending_bytes} bytes of an incomplete frame")
    for item in items:
        if isinstance(item, DecodeError):
            raise item
        merged = assembler.add(parse_segment(item), 0.0)
        if merged is not None:
            done.append(merged)
    if len(done) != 1 or assembler.pending:
        raise DecodeError("bad_split", f"payload holds {len(done)} complete messages, expected 1")
    return done[0]


Hj212Decoder = Callable[[RawMessage, DeviceInfo, DeviceModel], list[Reading]]


def make_hj212_decoder(default_tz: tzinfo = DEFAULT_TZ) -> Hj212Decoder:
    """A decoder bound to a default device zone (``CITYBRAIN_TIMEZONE`` at the process edge).

    Returns:
        A function with the ``streams.normalise`` decoder signature.
    """

    def decode(raw: RawMessage, dev: DeviceInfo, model: DeviceModel) -> list[Reading]:
        return _decode(raw, dev, model, default_tz)

    return decode


def decode_hj212(raw: RawMessage, dev: DeviceInfo, model: DeviceModel) -> list[Reading]:
    """Readings of one raw HJ 212 message (data uploads 2011/2051/2061/2031).

    Factor codes map to metrics through the model's ``hj212`` codes, and each value
    carries the unit the station sends that code in (:func:`~ingest.adapters.hj212.units.wire_units`:
    the model's ``hj212_unit``, else its station type's default); normalisation then
    converts to the model's canonical unit. ``DataTime`` is
    device-local: the zone is the device attribute ``timezone`` if set, else
    Asia/Shanghai. Sub-items the model has no metric for (the ``-Min``/``-Max`` of
    aggregates, unknown factors) are left out rather than rejected one by one: they
    are normal in the protocol, not errors of the device.

    Args:
        raw: The raw message (``raw.device_code`` was resolved from MN by the connector).
        dev: The device, from the ledger index.
        model: The device's model.

    Returns:
        The readings (none for commands, replies and state uploads).

    Raises:
        DecodeError: a codec reason (``bad_crc``, ``bad_segment``, ``bad_value``, ``bad_split`` …).
    """
    return _decode(raw, dev, model, DEFAULT_TZ)


def _decode(raw: RawMessage, dev: DeviceInfo, model: DeviceModel, default_tz: tzinfo) -> list[Reading]:
    packet = packet_of(raw.payload)
    tz = default_tz
    zone = dev.attributes.get("timezone")
    if isinstance(zone, str) and zone:
        try:
            tz = ZoneInfo(zone)
        except (ValueError, KeyError) as exc:
            raise DecodeError("bad_timezone", f"device {dev.code} timezone {zone!r}") from exc
    data = to_readings(
        packet,
        device_code=dev.code,
        received_at=raw.received_at,
        tz=tz,
        metric_for_code=model.by_hj212,
        # The unit of a code depends on the station: ambient SO2 is µg/m³, a stack's mg/m³.
        unit_for_code=wire_units(model, packet.st),
        cou_unit_for_code=cou_units(model),
        interval_suffix=model.hj212_intervals,
    )
    return [r for r in data.readings if r.metric in model.metrics]
