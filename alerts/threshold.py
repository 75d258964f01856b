"""Threshold rules with hysteresis: the first rule of the rule engine. Pure, no I/O.

A rule opens when a good or suspect reading goes above ``above`` and clears
only when a reading falls to ``clear_below`` or under (a deadband, so a
value hovering at the threshold does not flap). Bad readings never reach a
rule. State per (device, rule) is the event time the alert opened at, or
nothing; the caller keeps it (a Faust table), so a restart neither loses
nor repeats an alert, and the alert id is derived from that state.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

from alerts.errors import RuleError
from citybrain.records import (
    Alert,
    AlertState,
    Quality,
    Reading,
    Severity,
    alert_id,
    epoch_us,
    utc_from_epoch_us,
)

__all__ = ["ThresholdRule", "Transition", "evaluate"]


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """``metric > above`` opens; ``metric <= clear_below`` clears."""

    id: str
    device_class: str
    metric: str
    above: float
    clear_below: float
    severity: Severity
    message: str = ""

    def __post_init__(self) -> None:
        if self.clear_below > self.above:
            raise RuleError(f"rule {self.id}: clear_below {self.clear_below} is above the threshold {self.above}")
        if not self.id or not self.metric:
            raise RuleError("a rule needs an id and a metric")


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert that opened or cleared."""

    alert: Alert
    opened: bool


def state_key(device_code: str, rule_id: str) -> str:
    return f"{device_code}|{rule_id}"


def evaluate(
    rule: ThresholdRule,
    readings: Iterable[Reading],
    state: MutableMapping[str, int],
    *,
    district: str,
    device_class: str,
) -> list[Transition]:
    """Evaluate one rule over one device's readings, in event-time order.

    Args:
        rule: The rule.
        readings: Readings of one device (any metrics; others are ignored).
        state: (device|rule) → epoch µs the open alert started at; updated in place.
        district: The device's district (for the alert).
        device_class: The device's class.
    """
    out: list[Transition] = []
    relevant = sorted(
        (r for r in readings if r.metric == rule.metric and r.quality is not Quality.BAD), key=lambda r: r.event_time
    )
    for r in relevant:
        key = state_key(r.device_code, rule.id)
        opened_us = state.get(key)
        if opened_us is None and r.value > rule.above:
            state[key] = epoch_us(r.event_time)
            out.append(Transition(_alert(rule, r, r.event_time, AlertState.OPEN, district, device_class), True))
        elif opened_us is not None and r.value <= rule.clear_below:
            opened_at = utc_from_epoch_us(opened_us)
            if r.event_time < opened_at:
                continue  # late reading from before the alert opened: not a clear
            del state[key]
            alert = _alert(rule, r, opened_at, AlertState.RESOLVED, district, device_class, cleared=r)
            out.append(Transition(alert, False))
    return out


def _alert(
    rule: ThresholdRule,
    r: Reading,
    opened_at: object,
    st: AlertState,
    district: str,
    device_class: str,
    cleared: Reading | None = None,
) -> Alert:
    assert hasattr(opened_at, "tzinfo")
    return Alert(
        id=alert_id(r.device_code, rule.id, opened_at),  # type: ignore[arg-type]
        rule=rule.id,
        device_code=r.device_code,
        district=district,
        severity=rule.severity,
        state=st,
        opened_at=opened_at,  # type: ignore[arg-type]
        metric=rule.metric,
        value=r.value,
        threshold=rule.above,
        message=rule.message or f"{rule.metric} {r.value:g} {r.unit} above {rule.above:g}",
        cleared_at=cleared.event_time if cleared else None,
        device_class=device_class,
    )
