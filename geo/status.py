"""Device status for the map: fresh, stale, offline, alerting or unknown.

Pure and scalar; the SQL in :mod:`geo.stats` applies the same thresholds in
the database for city-wide counts. Thresholds are multiples of the model's
reporting cadence, so a manhole cover reporting hourly and an air station
reporting every minute are judged on the same scale.
"""

from __future__ import annotations

import enum
from datetime import datetime

__all__ = ["FRESH_CADENCES", "STALE_CADENCES", "DeviceStatus", "classify"]

# A device is fresh while it has missed at most one report (2 × cadence) and
# stale up to 10 × cadence; beyond that it is offline.
FRESH_CADENCES = 2
STALE_CADENCES = 10


class DeviceStatus(enum.StrEnum):
    """Map status of a device, in order of precedence (alerting wins)."""

    ALERTING = "alerting"
    FRESH = "fresh"
    STALE = "stale"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


def classify(last_seen: datetime | None, cadence_s: float | None, *, alerting: bool, now: datetime) -> DeviceStatus:
    """Status of one device.

    Args:
        last_seen: When the platform last received from it (aware), or None.
        cadence_s: Its model's reporting cadence in seconds, or None if the
            model is unknown.
        alerting: Whether it has an alert that is not resolved.
        now: The current time (aware).

    Returns:
        ``alerting`` if it has an unresolved alert; else ``unknown`` if it was
        never seen or its cadence is unknown; else ``fresh`` (age ≤ 2 ×
        cadence), ``stale`` (≤ 10 ×) or ``offline``. A last_seen in the future
        (clock skew) counts as fresh.
    """
    if alerting:
        return DeviceStatus.ALERTING
    if last_seen is None or cadence_s is None or cadence_s <= 0:
        return DeviceStatus.UNKNOWN
    age = (now - last_seen).total_seconds()
    if age <= FRESH_CADENCES * cadence_s:
        return DeviceStatus.FRESH
    if age <= STALE_CADENCES * cadence_s:
        return DeviceStatus.STALE
    return DeviceStatus.OFFLINE
