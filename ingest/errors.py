"""The ingest package's exceptions: one base, specific subclasses."""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error raised by the ingest package."""


class DecodeError(IngestError, ValueError):
    """A payload or frame could not be decoded.

    Attributes:
        reason: A short, stable, metric-label-safe reason (``bad_json``, ``bad_crc`` …).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class GatewayError(IngestError):
    """The gateway could not reach a broker it needs."""


class BackpressureError(IngestError):
    """A bounded queue is full; the caller must slow down, not drop."""


class SinkError(IngestError):
    """A sink could not start, or was stopped before a message was acknowledged."""


class CommandError(IngestError):
    """A downlink command was refused or failed.

    Attributes:
        reason: A short, stable, metric-label-safe reason (``unknown_command``,
            ``offline``, ``timeout``, ``rejected`` …).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
