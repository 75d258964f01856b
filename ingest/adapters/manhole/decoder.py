"""Stream-side decoder of manhole frames: ``decode_manhole(raw, dev, model)``.

Registered in ``streams.normalise`` under the adapter name ``manhole-tlv``.
"""

from __future__ import annotations

from core.records import RawMessage, Reading
from devices.index import DeviceInfo
from devices.models import DeviceModel
from ingest.adapters.json import codec as json_codec
from ingest.adapters.manhole import codec
from ingest.errors import DecodeError

__all__ = ["ADAPTER", "decode_manhole"]

ADAPTER = "manhole-tlv"


def decode_manhole(raw: RawMessage, dev: DeviceInfo, model: DeviceModel) -> list[Reading]:
    """Readings of one raw message from a manhole cover.

    The payload is either a binary frame (first byte 0x68, ``docs/manhole-frame.md``)
    or, when an NB-IoT platform decoded the device's data itself and pushed JSON,
    the canonical JSON telemetry the webhook built from it (first byte ``{``).

    When the ledger records the device's ``imei`` attribute, a frame carrying another
    IMEI is rejected (``device_mismatch``): a platform mapping error must not file one
    cover's alarms under another.

    Args:
        raw: The raw message (``raw.device_code`` was vouched for by the transport).
        dev: The device, from the ledger index.
        model: The device's model (unused: metric names are fixed by the frame).

    Returns:
        The readings.

    Raises:
        DecodeError: the codec's reasons, or ``device_mismatch``.
    """
    payload = raw.payload
    if payload[:1] == b"{":
        return json_codec.decode(payload, device_code=dev.code, received_at=raw.received_at)
    frame = codec.decode(payload)
    imei = dev.attributes.get("imei")
    if imei is not None and str(imei) != frame.imei:
        raise DecodeError("device_mismatch", f"frame IMEI {frame.imei} != ledger IMEI {imei} of {dev.code}")
    return codec.to_readings(frame, dev.code, raw.received_at)
