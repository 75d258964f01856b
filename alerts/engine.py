"""The rule engine: per device, in event-time order, with durations, hysteresis,
severity escalation and de-escalation, and flap suppression. Pure, no I/O.

State is plain JSON-able dicts, so the stream worker can keep it in PostgreSQL
in the same transaction as the alerts it produced (see
:mod:`streams.pipeline`); a replayed batch is recognised by the per-device
watermark and changes nothing, so a restart neither loses nor repeats an alert.

Per (device, rule) the phases are::

    idle ──cond──▶ pending ──held `for`──▶ open ──¬cond──▶ clearing ──held `clear_for`──▶ idle
                      │                     ▲ │                 │
                      └──¬cond──▶ idle      │ └─ severity change: escalate / de-escalate
                                            └──────cond─────────┘

A rule that opens ``flap_count`` times within ``flap_window`` is *flapping*:
its alert is marked so and held open (no further opens or clears are
emitted) until the condition has stayed false for a stable period.
"""

from __future__ import annotations

import logging
import math
import operator
import string
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from alerts.build import device_alert
from alerts.derive import derive
from alerts.errors import IndicatorError
from alerts.rules import AllOf, AnyOf, Compare, Condition, Not, Outside, Rate, Rule
from core.records import (
    Alert,
    AlertState,
    Quality,
    Reading,
    Severity,
    epoch_us,
    utc_from_epoch_us,
)

__all__ = ["DeviceContext", "Transition", "TransitionKind", "evaluate_device", "suppressed_flag"]

log = logging.getLogger(__name__)

TransitionKind = Literal["open", "escalate", "deescalate", "clear"]

_CMP: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

# HJ 212-2017 data flags M (维护期间数据) and C (校准状态) mean the station is in
# maintenance or calibration: its values must not raise alerts (docs/standards.md §2.5).
SUPPRESSING_FLAGS = frozenset({"M", "C"})


#: Pollution sources are judged the way enforcement reads their data: a value the
#: instrument flagged anything but N (M 维护, C 校准, D 故障, F 停运, S 手工设定, T 超测量上限,
#: B 通讯异常; standards.md §2.5) is kept as suspect or bad but never decides an exceedance
#: or adds to a permit load.
FLAG_STRICT_CLASSES = frozenset({"wastewater", "fluegas"})


def suppressed_flag(r: Reading) -> bool:
    """Readings taken in maintenance or calibration never reach rules."""
    return r.flag is not None and r.flag.rsplit(":", 1)[-1] in SUPPRESSING_FLAGS


def _excluded(r: Reading, device_class: str) -> bool:
    if r.quality is Quality.BAD or suppressed_flag(r):
        return True
    return device_class in FLAG_STRICT_CLASSES and r.quality is not Quality.GOOD


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What the engine needs to know about the device being evaluated."""

    code: str
    district: str
    device_class: str
    #: Fence membership keys (:func:`alerts.rules.fence_keys`), e.g. ``GeofenceHook.keys(code)``
    #: as is: a frozenset, no copy per device.
    fences: Collection[str] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    #: The device's model id, for rules scoped to models (e.g. micro-stations).
    model: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert transition to store and publish."""

    kind: TransitionKind
    alert: Alert


Snapshot = MutableMapping[str, list[float]]  # metric → [value, t, prev_value, prev_t]
RuleState = MutableMapping[str, Any]


def _value(snap: Snapshot, metric: str) -> float | None:
    cell = snap.get(metric)
    return None if cell is None else cell[0]


def _hold(leaf: MutableMapping[str, float], path: str, raw: bool, hold_s: float, t: float) -> bool:
    if hold_s <= 0:
        return raw
    if not raw:
        leaf.pop(path, None)
        return False
    since = leaf.setdefault(path, t)
    return t - since >= hold_s


def _eval(cond: Condition, snap: Snapshot, t: float, is_open: bool, leaf: MutableMapping[str, float]) -> bool:
    # Children are all evaluated (no short-circuit) so every leaf's hold timer stays current.
    if isinstance(cond, Compare):
        v = _value(snap, cond.metric)
        if v is None:
            return _hold(leaf, cond.path, False, cond.hold_s, t)
        thr = cond.value
        if is_open and cond.deadband:
            thr = thr - cond.deadband if cond.op in (">", ">=") else thr + cond.deadband
        return _hold(leaf, cond.path, _CMP[cond.op](v, thr), cond.hold_s, t)
    if isinstance(cond, Outside):
        v = _value(snap, cond.metric)
        lo, hi = cond.low, cond.high
        if is_open:
            lo, hi = lo + cond.deadband, hi - cond.deadband
        raw = v is not None and (v < lo or v > hi)
        return _hold(leaf, cond.path, raw, cond.hold_s, t)
    if isinstance(cond, Rate):
        cell = snap.get(cond.metric)
        raw = False
        if cell is not None and not math.isnan(cell[3]) and cell[1] > cell[3]:
            rate = (cell[0] - cell[2]) / (cell[1] - cell[3])
            raw = _CMP[cond.op](rate, cond.value)
        return _hold(leaf, cond.path, raw, cond.hold_s, t)
    if isinstance(cond, AllOf):
        results = [_eval(c, snap, t, is_open, leaf) for c in cond.items]
        return all(results)
    if isinstance(cond, AnyOf):
        results = [_eval(c, snap, t, is_open, leaf) for c in cond.items]
        return any(results)
    return not _eval(cond.item, snap, t, is_open, leaf)


def _level(rule: Rule, snap: Snapshot, t: float, leaf: MutableMapping[str, float]) -> Severity:
    sev = rule.levels[0].severity
    for lv in rule.levels:
        if lv.when is None or _eval(lv.when, snap, t, False, leaf):
            sev = max(sev, lv.severity)
    return sev


class _Fmt(string.Formatter):
    def get_value(self, key: Any, args: Any, kwargs: Any) -> Any:
        return kwargs.get(key, "?")


def _message(rule: Rule, snap: Snapshot, ctx: DeviceContext) -> str:
    values: dict[str, Any] = _attribute_values(ctx.attributes)
    values.update({m: round(c[0], 6 if abs(c[0]) < 1 else 3) for m, c in snap.items()})
    values.update(device=ctx.code, district=ctx.district, rule=rule.id)
    try:
        return _Fmt().format(rule.message, **values) if rule.message else rule.id
    except (ValueError, IndexError):
        return rule.message


def _attribute_values(attrs: Mapping[str, Any], prefix: str = "", depth: int = 4) -> dict[str, Any]:
    """Device attributes as message fields, nested keys joined by ``_``.

    ``{"permit": {"number": "X", "limits": {"hg": {"clause": "…"}}}}`` gives
    ``{permit_number}`` and ``{permit_limits_hg_clause}``, so a rule's message can name
    the permit and the clause an alert is about.
    """
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if depth > 1:
                out.update(_attribute_values(value, f"{name}_", depth - 1))
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def _trigger(rule: Rule, snap: Snapshot) -> tuple[str | None, float | None, float | None]:
    """The first metric of the rule with a value, its value and a threshold, for the alert record."""
    cond = rule.when
    while isinstance(cond, AllOf | AnyOf | Not):
        cond = cond.items[0] if isinstance(cond, AllOf | AnyOf) else cond.item
    metric = cond.metric
    thr = cond.value if isinstance(cond, Compare | Rate) else None
    return metric, _value(snap, metric), thr


def _alert(
    rule: Rule,
    ctx: DeviceContext,
    st: RuleState,
    snap: Snapshot,
    state: AlertState,
    cleared_at: datetime | None = None,
) -> Alert:
    opened_at = utc_from_epoch_us(int(st["opened"]))
    metric, value, thr = _trigger(rule, snap)
    labels = [("flapping", "true")] if st.get("flapping") else []
    if rule.standard:
        labels.append(("standard", rule.standard))
    return device_alert(
        rule.id,
        ctx.code,
        ctx.district,
        ctx.device_class,
        Severity(int(st["sev"])),
        opened_at,
        state=state,
        metric=metric,
        value=value if value is None or math.isfinite(value) else None,
        threshold=thr,
        message=_message(rule, snap, ctx),
        cleared_at=cleared_at,
        labels=tuple(labels),
    )


def _step(rule: Rule, ctx: DeviceContext, snap: Snapshot, st: RuleState, t: float, t_us: int) -> list[Transition]:
    out: list[Transition] = []
    leaf: MutableMapping[str, float] = st.setdefault("leaf", {})
    phase = st.get("phase", "idle")
    active = _eval(rule.when, snap, t, phase in ("open", "clearing"), leaf)

    def open_now() -> None:
        opens = [o for o in st.get("opens", []) if t - o < rule.flap_window_s]
        opens.append(t)
        st["opens"] = opens
        st["phase"] = "open"
        st["opened"] = t_us
        st["sev"] = int(_level(rule, snap, t, leaf))
        st["flapping"] = len(opens) >= rule.flap_count
        out.append(Transition("open", _alert(rule, ctx, st, snap, AlertState.OPEN)))

    if phase == "idle":
        if active:
            if rule.for_s <= 0:
                open_now()
            else:
                st["phase"], st["since"] = "pending", t
    elif phase == "pending":
        if not active:
            st["phase"] = "idle"
        elif t - st["since"] >= rule.for_s:
            open_now()
    elif phase in ("open", "clearing"):
        if active:
            st["phase"] = "open"
            sev = int(_level(rule, snap, t, leaf))
            if sev != st["sev"] and not st.get("flapping"):
                kind: TransitionKind = "escalate" if sev > st["sev"] else "deescalate"
                st["sev"] = sev
                out.append(Transition(kind, _alert(rule, ctx, st, snap, AlertState.OPEN)))
        else:
            hold = rule.clear_for_s
            if st.get("flapping"):
                # A flapping alert clears only once the condition is stable.
                hold = max(hold, rule.flap_window_s / rule.flap_count)
            if phase == "open":
                st["phase"], st["since"] = "clearing", t
            if t - st["since"] >= hold:
                out.append(
                    Transition("clear", _alert(rule, ctx, st, snap, AlertState.RESOLVED, utc_from_epoch_us(t_us)))
                )
                st["phase"] = "idle"
                st["flapping"] = False
    return out


def evaluate_device(
    rules: Iterable[Rule],
    readings: Iterable[Reading],
    ctx: DeviceContext,
    snapshot: Snapshot,
    states: MutableMapping[str, RuleState],
    watermark_us: int,
    *,
    on_derive_error: Callable[[str, IndicatorError], None] | None = None,
) -> tuple[list[Transition], int]:
    """Evaluate a device's rules over its new readings, in event-time order.

    Args:
        rules: Rules that apply to the device.
        readings: The device's readings from this batch (any order).
        ctx: The device.
        snapshot: Latest values per metric (updated in place).
        states: Rule id → state (updated in place).
        watermark_us: Event time (µs) up to which this device was already evaluated;
            older readings are a replay or arrived too late for rules and are skipped.
        on_derive_error: Told (class, error) when the device's derived indicators
            (:func:`alerts.derive.derive`) cannot be computed, after the error is
            logged with the device code; the rules on measured metrics still run.

    Returns:
        The transitions, and the new watermark.
    """
    applicable = [r for r in rules if r.applies_to(ctx.device_class, ctx.district, ctx.code, ctx.fences, ctx.model)]
    by_time: dict[int, list[Reading]] = {}
    for r in readings:
        if _excluded(r, ctx.device_class):
            continue
        t_us = epoch_us(r.event_time)
        if t_us <= watermark_us:
            continue
        by_time.setdefault(t_us, []).append(r)
    out: list[Transition] = []

    def on_error(device_class: str, exc: IndicatorError) -> None:
        log.warning("device %s: derived indicators not computed: %s", ctx.code, exc)
        if on_derive_error is not None:
            on_derive_error(device_class, exc)

    for t_us in sorted(by_time):
        t = t_us / 1_000_000
        touched = set()
        for r in by_time[t_us]:
            prev = snapshot.get(r.metric)
            snapshot[r.metric] = [r.value, t, prev[0], prev[1]] if prev else [r.value, t, math.nan, math.nan]
            touched.add(r.metric)
        touched |= derive(ctx.device_class, snapshot, ctx.attributes, t, on_error=on_error)
        for rule in applicable:
            st = states.setdefault(rule.id, {})
            if not (rule.metrics & touched) and st.get("phase", "idle") == "idle":
                continue
            out += _step(rule, ctx, snapshot, st, t, t_us)
        watermark_us = t_us
    return out, watermark_us


def open_alerts(states: Mapping[str, RuleState]) -> list[str]:
    """Rule ids with an open alert in a device's states."""
    return [rid for rid, st in states.items() if st.get("phase") in ("open", "clearing")]
