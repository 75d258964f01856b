"""Fence membership keys for rule scopes, positions from readings, fence alerts (pure parts of alerts.geofence)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from shapely.geometry import box

from alerts.engine import DeviceContext, evaluate_device
from alerts.geofence import FenceMembership, FenceRecord, _build_membership, fence_transitions, positions_from_readings
from alerts.rules import parse_rules
from core.records import AlertState, Quality, Reading, Severity
from devices.index import DeviceInfo
from geo.coords import wgs84_to_gcj02
from geo.fences import FenceEvent

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)

FENCES = [
    FenceRecord("school-1", "厦门一中", "school_zone", box(118.09, 24.43, 118.11, 24.45)),
    FenceRecord("school-2", "双十中学", "school_zone", box(118.12, 24.47, 118.13, 24.48)),
    FenceRecord("reservoir", "坂头水库", "water_source_protection", box(118.05, 24.68, 118.09, 24.72)),
]


def _codes() -> list[str]:
    from devices.code import DeviceCode

    return [DeviceCode.build("350203", "0311", n).full for n in range(1, 5)]


def test_keys_cover_id_name_and_kind_and_sets_are_shared() -> None:
    a, b, c, _ = _codes()
    m = FenceMembership(FENCES, [a, b, c], np.array([118.10, 118.095, 118.5]), np.array([24.44, 24.435, 24.9]))
    assert m.keys(a) == {"school-1", "name/厦门一中", "kind/school_zone"}
    assert m.keys(a) is m.keys(b)  # interned: devices in the same fences share one set
    assert m.keys(c) == frozenset() and m.keys("unknown") == frozenset()
    assert len(m) == 2 and m.fence_ids(a) == {"school-1"}


def test_nan_location_and_no_fences() -> None:
    a, *_ = _codes()
    assert len(FenceMembership(FENCES, [a], np.array([np.nan]), np.array([np.nan]))) == 0
    assert FenceMembership().keys(a) == frozenset()


def test_tracked_devices_override_their_registered_location_and_gcj02_is_converted() -> None:
    a, b, _, mobile = _codes()
    gcj = wgs84_to_gcj02(118.10, 24.44)
    fixed = {a: (*gcj, "GCJ02"), b: (118.125, 24.475, "WGS84"), mobile: (118.10, 24.44, "WGS84")}
    m = _build_membership(FENCES, fixed, [(mobile, ["reservoir"]), (b, [])])
    assert m.fence_ids(a) == {"school-1"}  # GCJ-02 ~500 m off: inside only once converted
    assert m.fence_ids(mobile) == {"reservoir"}
    assert m.fence_ids(b) == frozenset()  # tracked: left every fence, whatever its registration says
    m.set_fences(b, ["school-2", "deleted-fence"])
    assert m.fence_ids(b) == {"school-2"}


def test_rule_scoped_to_a_fence_kind_applies_only_inside() -> None:
    rules = parse_rules(
        """
- id: noise.school
  class: noise
  scope: {fence_kind: school_zone}
  when: {metric: la, op: ">", value: 55}
- id: noise.reservoir
  class: noise
  scope: {fence: 坂头水库}
  when: {metric: la, op: ">", value: 50}
"""
    )
    a, _, c, _ = _codes()
    m = FenceMembership(FENCES, [a, c], np.array([118.10, 118.5]), np.array([24.44, 24.9]))
    reading = Reading(a, "la", T0, T0, 60.0, "dB(A)")
    out, _ = evaluate_device(rules, [reading], DeviceContext(a, "350203", "noise", fences=tuple(m.keys(a))), {}, {}, 0)
    assert [t.alert.rule for t in out] == ["noise.school"]
    far = Reading(c, "la", T0, T0, 60.0, "dB(A)")
    out, _ = evaluate_device(rules, [far], DeviceContext(c, "350203", "noise", fences=tuple(m.keys(c))), {}, {}, 0)
    assert out == []


def test_positions_need_both_metrics_at_one_time_and_skip_bad_fixes() -> None:
    (a, b, *_) = _codes()
    t1 = T0 + timedelta(seconds=30)

    def r(code: str, metric: str, value: float, at: datetime, quality: Quality = Quality.GOOD) -> Reading:
        return Reading(code, metric, at, at, value, "deg", quality)

    readings = [
        r(a, "lat", 24.44, T0),
        r(a, "lon", 118.10, T0),
        r(a, "pm25", 30.0, T0),
        r(a, "lon", 118.11, t1),  # no lat at t1
        r(b, "lon", 0.0, T0, Quality.BAD),
        r(b, "lat", 0.0, T0),
    ]
    assert positions_from_readings(readings) == [(a, 118.10, 24.44, T0)]


def test_enter_opens_and_leave_clears_the_same_alert() -> None:
    a, *_ = _codes()
    dev = DeviceInfo(a, "air-micro@1", "air", "350203", None, "active", {})
    records = {f.id: f for f in FENCES}
    t1 = T0 + timedelta(minutes=7)
    events = [
        FenceEvent(a, "school-1", "enter", T0),
        FenceEvent(a, "school-1", "leave", t1, T0),
        FenceEvent(a, "school-2", "leave", t1, datetime(1970, 1, 1, tzinfo=UTC)),  # entry unknown: skipped
        FenceEvent("35020303110009999", "school-1", "enter", T0),  # not in the batch's devices: skipped
    ]
    out = fence_transitions(events, {a: dev}, records)
    assert [k for k, _ in out] == ["open", "clear"]
    opened, cleared = out[0][1], out[1][1]
    assert opened.id == cleared.id and opened.rule == "geofence.school-1"
    assert (opened.severity, opened.state, opened.district, opened.device_class) == (
        Severity.INFO,
        AlertState.OPEN,
        "350203",
        "air",
    )
    assert cleared.state is AlertState.RESOLVED and cleared.cleared_at == t1 and cleared.opened_at == T0
    assert dict(opened.labels) == {"kind": "geofence", "fence": "school-1", "fence_kind": "school_zone"}
    assert "厦门一中" in opened.message
