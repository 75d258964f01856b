"""Device status for the map: fresh, stale, offline, alerting or unknown.

Pure and scalar; the SQL in :mod:`geo.stats` applies the same thresholds in
the database for city-wide counts. Thresholds are multiples of the model's
reporting cadence, so a manhole cover reporting hourly and an air station
reporting every minute are judged on the same scale.

The device's transport session (``device_sessions``, fed by its MQTT birth
and last-will status messages; see :mod:`streams.liveness`) sharpens the
age-based verdict: a last will with no data after it is offline at once, and
a device whose session is up is at worst stale — connected but silent, a
hung sensor rather than a lost link. Devices without a status topic (HJ 212,
NB-IoT) are judged on age alone.
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


def classify(
    last_seen: datetime | None,
    cadence_s: float | None,
    *,
    alerting: bool,
    now: datetime,
    connected: bool | None = None,
    status_at: datetime | None = None,
) -> DeviceStatus:
    """Status of one device.

    Args:
        last_seen: When the platform last received from it (aware), or None.
        cadence_s: Its model's reporting cadence in seconds, or None if the
            model is unknown.
        alerting: Whether it has an alert that is not resolved.
        now: The current time (aware).
        connected: Its last status message said online (True) or was its
            last will (False); None if it never sent one.
        status_at: When that status message was received (aware).

    Returns:
        ``alerting`` if it has an unresolved alert; else ``unknown`` if it was
        never seen or its cadence is unknown; else ``offline`` if its last
        will came after its last data; else ``fresh`` (age ≤ 2 × cadence),
        ``stale`` (≤ 10 ×, or any age while its session is up) or
        ``offline``. A last_seen in the future (clock skew) counts as fresh.
    """
    if alerting:
        return DeviceStatus.ALERTING
    if last_seen is None or cadence_s is None or cadence_s <= 0:
        return DeviceStatus.UNKNOWN
    if connected is False and status_at is not None and status_at >= last_seen:
        return DeviceStatus.OFFLINE
    age = (now - last_seen).total_seconds()
    if age <= FRESH_CADENCES * cadence_s:
        return DeviceStatus.FRESH
    if connected or age <= STALE_CADENCES * cadence_s:
        return DeviceStatus.STALE
    return DeviceStatus.OFFLINE
