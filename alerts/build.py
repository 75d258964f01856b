"""The one way an alert about a device is built: rules, detectors, liveness and geofences alike.

The id is derived, never chosen: :func:`core.records.alert_id` of the device,
the alert's key (its rule, or for a per-metric detector the rule and metric)
and the moment it opened, so every worker and every replay of an evaluation
computes the same id, and a clear finds the alert its open created.
"""

from __future__ import annotations

from datetime import datetime

from core.records import Alert, AlertState, Severity, alert_id

__all__ = ["device_alert"]


def device_alert(
    rule: str,
    device_code: str,
    district: str,
    device_class: str | None,
    severity: Severity,
    opened_at: datetime,
    *,
    state: AlertState = AlertState.OPEN,
    key: str | None = None,
    metric: str | None = None,
    value: float | None = None,
    threshold: float | None = None,
    message: str = "",
    cleared_at: datetime | None = None,
    labels: tuple[tuple[str, str], ...] = (),
) -> Alert:
    """An alert of ``rule`` about one device, with its deterministic id.

    Args:
        rule: Rule or detector id (``aqi.pm25``, ``anomaly.ewma``, ``device.offline``, ``geofence.<id>``).
        device_code: The device.
        district: Its district.
        device_class: Its class.
        severity: Current severity.
        opened_at: When the condition began (UTC); part of the id.
        state: Lifecycle state (open, or resolved for a clear).
        key: What the id is keyed on besides device and opening time; default ``rule``
            (per-metric detectors use ``rule.metric`` so two metrics get two alerts).
        metric: The triggering metric, if any.
        value: Its value.
        threshold: The threshold crossed, if any.
        message: Human-readable summary.
        cleared_at: When the condition cleared, for a clear.
        labels: Extra labels (detector, standard, fence …).

    Raises:
        RecordError: a field is invalid (see :class:`core.records.Alert`).
    """
    return Alert(
        id=alert_id(device_code, key or rule, opened_at),
        rule=rule,
        device_code=device_code,
        district=district,
        severity=severity,
        state=state,
        opened_at=opened_at,
        metric=metric,
        value=value,
        threshold=threshold,
        message=message,
        cleared_at=cleared_at,
        device_class=device_class,
        labels=labels,
    )
