"""Rule scopes: fences by id or name, fence kinds, models, singular and plural keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.engine import DeviceContext, evaluate_device
from alerts.errors import RuleError
from alerts.rules import Rule, RuleSet, fence_keys, parse_rules, shipped_rules, unknown_models
from core.records import Reading, Severity
from devices.models import shipped_models

CODE = "35020303110000018"


def _one(scope: str) -> Rule:
    (rule,) = parse_rules(f"- {{id: r, class: noise, scope: {scope}, when: {{metric: la, op: '>', value: 1}}}}")
    return rule


def test_fence_by_id_or_name_and_kind() -> None:
    inside = fence_keys("school-1", "厦门一中", "school_zone")
    assert inside == ("school-1", "name/厦门一中", "kind/school_zone")
    by_id, by_name, by_kind = _one("{fence: school-1}"), _one("{fence: 厦门一中}"), _one("{fence_kind: school_zone}")
    for rule in (by_id, by_name, by_kind):
        assert rule.applies_to("noise", "350203", CODE, frozenset(inside))
        assert not rule.applies_to("noise", "350203", CODE, frozenset())
        assert not rule.applies_to("air", "350203", CODE, frozenset(inside))
    other = frozenset(fence_keys("school-2", "双十中学", "school_zone"))
    assert not by_id.applies_to("noise", "350203", CODE, other)
    assert by_kind.applies_to("noise", "350203", CODE, other)


def test_a_name_never_matches_an_id_and_lists_merge() -> None:
    # A fence *named* "school-1" is not the fence with id "school-1" … but a rule
    # naming "school-1" means either, as documented (id or name).
    rule = _one("{fences: [a, b], fence: c, districts: '350203'}")
    assert rule.fences == {"a", "name/a", "b", "name/b", "c", "name/c"}
    assert rule.districts == {"350203"}
    assert rule.applies_to("noise", "350203", CODE, ("name/c",))
    assert not rule.applies_to("noise", "350206", CODE, ("name/c",))


def test_bad_scopes_are_refused_with_the_reason() -> None:
    with pytest.raises(RuleError, match="unknown fence kind"):
        _one("{fence_kind: playground}")
    with pytest.raises(RuleError, match="unknown scope keys"):
        _one("{geofence: x}")
    with pytest.raises(RuleError, match="non-empty strings"):
        _one("{fences: []}")


def test_shipped_school_zone_noise_rule() -> None:
    (rule,) = [r for r in shipped_rules().rules if r.id == "noise.school_zone.day"]
    assert rule.fences == {"kind/school_zone"}
    assert rule.applies_to("noise", "350206", CODE, frozenset(fence_keys("s", "s", "school_zone")))
    assert not rule.applies_to("noise", "350206", CODE, ())


def test_a_model_scope_needs_the_devices_model() -> None:
    rule = _one("{models: [noise-a, noise-b]}")
    assert rule.models == {"noise-a", "noise-b"}
    assert rule.applies_to("noise", "350203", CODE, (), "noise-b")
    assert rule.applies_to("noise", "350203", CODE, (), "noise-b@2")  # the ledger's id, with its version
    assert not rule.applies_to("noise", "350203", CODE, (), "noise-c")
    assert not rule.applies_to("noise", "350203", CODE)  # a model-scoped rule skips a device of unknown model


def test_micro_stations_raise_particulates_only_when_the_exceedance_lasts() -> None:
    """A micro-station's minute over 75 µg/m³ is its noise; ten minutes over it is an alert (docs/anomaly.md)."""
    rules = shipped_rules().for_class("air")
    micro = DeviceContext(CODE, "350203", "air", model="air-micro")
    station = DeviceContext(CODE, "350203", "air", model="air-station")
    t0 = datetime(2026, 12, 7, 10, 20, tzinfo=UTC)

    def minutes(values: list[float]) -> list[Reading]:
        return [Reading(CODE, "pm25", t0 + timedelta(minutes=i), t0, v, "") for i, v in enumerate(values)]

    blip = minutes([60, 77, 62, 60, 140, 60])
    assert evaluate_device(rules, blip, micro, {}, {}, 0)[0] == []
    opened = [t.alert.rule for t in evaluate_device(rules, blip, station, {}, {}, 0)[0] if t.kind == "open"]
    assert set(opened) == {"air.pm25.high"}  # a reference station: at once, as before
    sustained = minutes([60] + [90] * 12)
    out = [t for t in evaluate_device(rules, sustained, micro, {}, {}, 0)[0] if "pm25" in t.alert.rule]
    assert [(t.kind, t.alert.rule, t.alert.severity, t.alert.opened_at) for t in out] == [
        ("open", "air.micro.pm25.high", Severity.WARNING, t0 + timedelta(minutes=11))
    ]
    far = evaluate_device(rules, minutes([60, 180]), micro, {}, {}, 0)[0]
    assert Severity.CRITICAL in [t.alert.severity for t in far if t.kind == "open"]  # twice the limit: at once


def test_a_model_scope_naming_no_registered_model_is_reported() -> None:
    rules = RuleSet([_one("{models: [noise-monitor, nosie-monitor]}")])
    assert unknown_models(rules, ["noise-monitor@1", "air-station@1"]) == [("r", "nosie-monitor")]
    assert unknown_models(shipped_rules(), [m.id for m in shipped_models().latest()]) == []
