"""Rule engine: duration, hysteresis, OR/NOT, escalation, flapping, replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.engine import DeviceContext, evaluate_device
from alerts.errors import RuleError
from alerts.rules import parse_duration, parse_rules, shipped_rules
from core.records import AlertState, Quality, Reading, Severity

CODE = "35020603080000017"
T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
CTX = DeviceContext(CODE, "350206", "air", model="air-station")


def _readings(metric: str, values: list[float], step_s: float = 1.0, start: int = 0, **kw: object) -> list[Reading]:
    return [
        Reading(CODE, metric, T0 + timedelta(seconds=(start + i) * step_s), T0, v, "", **kw)  # type: ignore[arg-type]
        for i, v in enumerate(values)
    ]


def _rules(text: str):
    return parse_rules(text, "test.yaml")


def _run(rules, readings, ctx=CTX, snap=None, states=None, wm=0):
    snap = {} if snap is None else snap
    states = {} if states is None else states
    out, wm = evaluate_device(rules, readings, ctx, snap, states, wm)
    return out, snap, states, wm


SIMPLE = """
- id: r
  class: air
  when: {metric: pm25, op: ">", value: 75, deadband: 7.5}
  severity:
    - {level: warning}
    - {level: major, when: {metric: pm25, op: ">", value: 115}}
    - {level: critical, when: {metric: pm25, op: ">", value: 150}}
"""


def test_open_escalate_deescalate_clear_with_hysteresis() -> None:
    rules = _rules(SIMPLE)
    out, *_ = _run(rules, _readings("pm25", [50, 80, 120, 160, 100, 70, 66]))
    kinds = [(t.kind, t.alert.severity) for t in out]
    assert kinds == [
        ("open", Severity.WARNING),
        ("escalate", Severity.MAJOR),
        ("escalate", Severity.CRITICAL),
        ("deescalate", Severity.WARNING),
        ("clear", Severity.WARNING),  # 70 is inside the deadband (75-7.5=67.5): still open; 66 clears
    ]
    assert len({t.alert.id for t in out}) == 1
    assert out[-1].alert.state is AlertState.RESOLVED


def test_minimum_duration() -> None:
    rules = _rules("""
- id: r
  class: air
  when: {metric: pm25, op: ">", value: 75}
  for: 5s
""")
    out, *_ = _run(rules, _readings("pm25", [80, 80, 80, 60, 80, 80, 80, 80, 80, 80]))
    assert [t.kind for t in out] == ["open"]
    assert out[0].alert.opened_at == T0 + timedelta(seconds=9)


def test_or_and_not() -> None:
    rules = _rules("""
- id: r
  class: air
  when:
    all:
      - any: [{metric: pm25, op: ">", value: 75}, {metric: pm10, op: ">", value: 150}]
      - not: {metric: humidity, op: ">", value: 95}
""")
    rs = _readings("humidity", [50]) + _readings("pm10", [200], start=1)
    out, *_ = _run(rules, rs)
    assert [t.kind for t in out] == ["open"]
    out, *_ = _run(rules, _readings("humidity", [99]) + _readings("pm25", [100], start=1))
    assert out == []


def test_sustained_tilt_leaf_duration_or_immediate() -> None:
    manhole = [r for r in shipped_rules().for_class("manhole") if r.id == "manhole.tilt"]
    ctx = DeviceContext(CODE, "350206", "manhole")
    # 20° for 1 s (a passing vehicle) then back: no alert
    out, *_ = _run(manhole, _readings("tilt", [0, 20, 20, 0], step_s=0.5), ctx)
    assert out == []
    # 20° for 2.5 s: alert
    out, *_ = _run(manhole, _readings("tilt", [0, 20, 20, 20, 20, 20, 20], step_s=0.5), ctx)
    assert [t.kind for t in out] == ["open"] and out[0].alert.severity is Severity.MAJOR
    # 95° at once: critical alert immediately
    out, *_ = _run(manhole, _readings("tilt", [0, 95], step_s=0.5), ctx)
    assert [(t.kind, t.alert.severity) for t in out] == [("open", Severity.CRITICAL)]


def test_flapping_sensor_raises_one_alert_not_fifty() -> None:
    rules = _rules("""
- id: r
  class: air
  when: {metric: pm25, op: ">", value: 75}
  clear_for: 60s
  flap_count: 3
  flap_window: 30m
""")
    values = [80, 70] * 50  # flips every 10 s for 1000 s
    out, *_ = _run(rules, _readings("pm25", values, step_s=10))
    assert [t.kind for t in out] == ["open"]


def test_slow_flapping_is_marked_and_held_open() -> None:
    rules = _rules("""
- id: r
  class: air
  when: {metric: pm25, op: ">", value: 75}
  clear_for: 0s
  flap_count: 3
  flap_window: 30m
""")
    values = [80, 70] * 20  # each cycle opens and clears
    out, *_ = _run(rules, _readings("pm25", values, step_s=30))
    opens = [t for t in out if t.kind == "open"]
    assert len(opens) == 3
    assert dict(opens[-1].alert.labels).get("flapping") == "true"
    # after flapping was detected nothing more is emitted while it keeps flapping
    assert out[-1].kind == "open"


def test_replay_changes_nothing_and_state_survives_restart() -> None:
    rules = _rules(SIMPLE)
    batch1 = _readings("pm25", [50, 80, 90])
    out1, snap, states, wm = _run(rules, batch1)
    assert [t.kind for t in out1] == ["open"]
    # Replay of the same batch after a restart (state reloaded, as from the database)
    out2, snap, states, wm = _run(rules, batch1, snap=snap, states=states, wm=wm)
    assert out2 == []
    out3, *_ = _run(rules, _readings("pm25", [60], start=3), snap=snap, states=states, wm=wm)
    assert [t.kind for t in out3] == ["clear"] and out3[0].alert.id == out1[0].alert.id


def test_bad_and_maintenance_readings_never_reach_rules() -> None:
    rules = _rules(SIMPLE)
    out, *_ = _run(rules, _readings("pm25", [500], quality=Quality.BAD))
    assert out == []
    out, *_ = _run(rules, _readings("pm25", [500], flag="suspect:M"))
    assert out == []
    out, *_ = _run(rules, _readings("pm25", [500], flag="C"))
    assert out == []


def test_scope_by_district() -> None:
    rules = _rules("""
- id: r
  class: air
  scope: {districts: ["350203"]}
  when: {metric: pm25, op: ">", value: 75}
""")
    out, *_ = _run(rules, _readings("pm25", [100]))
    assert out == []
    out, *_ = _run(rules, _readings("pm25", [100]), ctx=DeviceContext(CODE, "350203", "air", model="air-station"))
    assert len(out) == 1


def test_derived_indicators_drive_standard_rules() -> None:
    water = shipped_rules().for_class("water")
    ctx = DeviceContext(CODE, "350211", "water", attributes={"target_class": 3, "waterbody": "river"})
    # NH3-N 1.8 mg/L is class V (≤2.0, GB 3838 Table 1): two classes worse than III
    rs = _readings("nh3n", [0.3, 1.8], step_s=3600) + _readings("ph", [7.2, 7.2], step_s=3600)
    out, snap, *_ = _run(water, rs, ctx)
    assert [(t.kind, t.alert.rule, t.alert.severity) for t in out] == [
        ("open", "water.class.below_target", Severity.MAJOR)
    ]
    assert snap["water_class"][0] == 5
    noise = shipped_rules().for_class("noise")
    ctx = DeviceContext(CODE, "350203", "noise", attributes={"zone": "1"})
    # zone 1 night limit 45 dB(A) (GB 3096-2008 Table 1); Ln 52 → 7 dB over → major
    out, *_ = _run(noise, _readings("ln", [52]), ctx)
    assert [(t.alert.rule, t.alert.severity) for t in out] == [("noise.night.over_limit", Severity.MAJOR)]


def test_rule_validation_errors_are_precise() -> None:
    with pytest.raises(RuleError, match="op must be one of"):
        _rules("- {id: r, class: air, when: {metric: pm25, op: '=>', value: 1}}")
    with pytest.raises(RuleError, match="needs a metric"):
        _rules("- {id: r, class: air, when: {op: '>', value: 1}}")
    with pytest.raises(RuleError, match="duplicate rule ids"):
        from alerts.rules import RuleSet

        RuleSet(_rules("- {id: r, class: air, when: {metric: a, op: '>', value: 1}}") * 2)
    with pytest.raises(RuleError, match="bad duration"):
        parse_duration("soon")
    assert parse_duration("2m") == 120 and parse_duration("500ms") == 0.5


def test_shipped_rules_load() -> None:
    rs = shipped_rules()
    assert {r.device_class for r in rs.rules} == {"air", "water", "noise", "manhole", "pole", "wastewater", "fluegas"}
