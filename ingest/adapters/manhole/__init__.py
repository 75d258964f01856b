"""Smart manhole cover (智能井盖) binary TLV frame: the pure codec and its stream decoder.

The frame layout is documented byte by byte in ``docs/manhole-frame.md``.
"""

from ingest.adapters.manhole.codec import (
    ALARM_BITS,
    END,
    MAX_FRAME_LEN,
    START,
    VERSION,
    FrameType,
    ManholeFrame,
    checksum,
    decode,
    encode,
    to_readings,
)

__all__ = [
    "ALARM_BITS",
    "END",
    "MAX_FRAME_LEN",
    "START",
    "VERSION",
    "FrameType",
    "ManholeFrame",
    "checksum",
    "decode",
    "encode",
    "to_readings",
]
