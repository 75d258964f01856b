"""Debounced fence enter/leave (geo.tracking): pure, no broker, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from geo.fences import FenceEvent
from geo.tracking import DebouncePolicy, FenceTracker, Fix, TrackState

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
DEV = "35020303080000012"
SCHOOL = box(118.09, 24.43, 118.11, 24.45)
INSIDE = (118.10, 24.44)
OUTSIDE = (118.08, 24.44)  # ~1 km west


def _fixes(points: list[tuple[float, float]], step_s: float = 5.0, start: datetime = T0) -> list[Fix]:
    return [Fix(DEV, lon, lat, start + timedelta(seconds=i * step_s)) for i, (lon, lat) in enumerate(points)]


def _run(tracker: FenceTracker, fixes: list[Fix], state: TrackState | None = None) -> tuple[TrackState, list]:
    states, events = tracker.step({DEV: state} if state else {}, fixes)
    return states.get(DEV, state or TrackState()), events


@pytest.fixture
def tracker() -> FenceTracker:
    return FenceTracker([("school-1", SCHOOL)], DebouncePolicy(margin_m=15, min_fixes=2, hold_s=10))


def test_gps_jitter_on_the_boundary_never_flaps(tracker: FenceTracker) -> None:
    # ±5 m around the western edge (lon 118.09), for ten minutes: all within the margin.
    rng = np.random.default_rng(1)
    jitter = [(118.09 + rng.uniform(-5e-5, 5e-5), 24.44 + rng.uniform(-1e-4, 1e-4)) for _ in range(120)]
    assert any(lon < 118.09 for lon, _ in jitter) and any(lon > 118.09 for lon, _ in jitter)
    state, events = _run(tracker, _fixes(jitter))
    assert events == []
    assert dict(state.fences) == {} and dict(state.pending) == {}


def test_single_stray_fixes_beyond_the_margin_do_not_flap(tracker: FenceTracker) -> None:
    # A multipath outlier 1 km away, once, between good fixes inside: no leave/enter pair.
    state, events = _run(tracker, _fixes([INSIDE, INSIDE, INSIDE]))
    assert [e.kind for e in events] == ["enter"]
    after = T0 + timedelta(minutes=1)
    state, events = _run(tracker, _fixes([OUTSIDE, INSIDE, OUTSIDE, INSIDE], start=after), state)
    assert events == []
    assert set(state.fences) == {"school-1"} and dict(state.pending) == {}


def test_enter_needs_fixes_and_hold_and_is_dated_at_the_first_fix(tracker: FenceTracker) -> None:
    state, events = _run(tracker, _fixes([OUTSIDE, INSIDE], step_s=5))
    assert events == [] and state.pending["school-1"].kind == "enter"
    # Second fix inside, but only 5 s after the first: hold 10 s not met yet.
    state, events = _run(tracker, [Fix(DEV, *INSIDE, T0 + timedelta(seconds=10))], state)
    assert events == [] and state.pending["school-1"].fixes == 2
    state, events = _run(tracker, [Fix(DEV, *INSIDE, T0 + timedelta(seconds=15))], state)
    assert events == [FenceEvent(DEV, "school-1", "enter", T0 + timedelta(seconds=5))]
    assert state.fences == {"school-1": int((T0 + timedelta(seconds=5)).timestamp()) * 1_000_000}


def test_leave_carries_the_entry_time(tracker: FenceTracker) -> None:
    state, events = _run(tracker, _fixes([INSIDE] * 3 + [OUTSIDE] * 4))
    assert [(e.kind, e.at, e.entered_at) for e in events] == [
        ("enter", T0, None),
        ("leave", T0 + timedelta(seconds=15), T0),
    ]
    assert dict(state.fences) == {}


def test_replayed_fixes_change_nothing(tracker: FenceTracker) -> None:
    fixes = _fixes([INSIDE] * 4)
    state, events = _run(tracker, fixes)
    assert len(events) == 1
    again, events = _run(tracker, fixes, state)
    assert events == [] and again == state
    # Out of order within a batch is sorted by event time first.
    shuffled = list(reversed(_fixes([OUTSIDE] * 4, start=T0 + timedelta(minutes=5))))
    _, events = _run(tracker, shuffled, state)
    assert [(e.kind, e.at) for e in events] == [("leave", T0 + timedelta(minutes=5))]


def test_deleted_fence_is_left_at_the_next_fix(tracker: FenceTracker) -> None:
    state, _ = _run(tracker, _fixes([INSIDE] * 3))
    other = FenceTracker([("airport", box(118.11, 24.53, 118.15, 24.56))], tracker.policy)
    later = T0 + timedelta(hours=1)
    state, events = _run(other, [Fix(DEV, *INSIDE, later)], state)
    assert events == [FenceEvent(DEV, "school-1", "leave", later, T0)]
    assert dict(state.fences) == {}


def test_without_debouncing_every_fix_counts() -> None:
    tracker = FenceTracker([("school-1", SCHOOL)], DebouncePolicy(margin_m=0, min_fixes=1, hold_s=0))
    _, events = _run(tracker, _fixes([INSIDE, OUTSIDE, INSIDE]))
    assert [e.kind for e in events] == ["enter", "leave", "enter"]


def test_crossing_into_an_adjacent_fence_leaves_before_entering() -> None:
    west, east = box(118.0, 24.4, 118.1, 24.5), box(118.1, 24.4, 118.2, 24.5)
    tracker = FenceTracker([("w", west), ("e", east)], DebouncePolicy(margin_m=0, min_fixes=1, hold_s=0))
    state, _ = _run(tracker, _fixes([(118.05, 24.45)]))
    _, events = _run(tracker, _fixes([(118.15, 24.45)], start=T0 + timedelta(minutes=1)), state)
    assert [(e.kind, e.fence_id) for e in events] == [("leave", "w"), ("enter", "e")]


def test_observe_is_vectorised_and_agrees_with_the_margin(tracker: FenceTracker) -> None:
    # 10 m and 30 m inside the western edge; 10 m and 30 m outside it; far away.
    m_per_deg_lon = 111_320 * np.cos(np.radians(24.55))
    lons = np.array([118.09 + 10 / m_per_deg_lon, 118.09 + 30 / m_per_deg_lon, 118.09 - 10 / m_per_deg_lon,
                     118.09 - 30 / m_per_deg_lon, 118.5])  # fmt: skip
    lats = np.full(5, 24.44)
    fix_idx, fence_idx, obs = tracker.observe(lons, lats)
    assert dict(zip(fix_idx.tolist(), obs.tolist(), strict=True)) == {0: -1, 1: 1, 2: -1}
    assert set(fence_idx.tolist()) == {0}


def test_state_json_round_trip_and_nan_fixes_skipped(tracker: FenceTracker) -> None:
    state, _ = _run(tracker, _fixes([INSIDE] * 3 + [OUTSIDE]))
    assert state.pending and state.fences
    assert TrackState.from_json(state.to_json()) == state
    assert TrackState.from_json(None) == TrackState()
    states, events = tracker.step({}, [Fix(DEV, float("nan"), 24.44, T0)])
    assert states == {} and events == []


def test_policy_and_fence_validation() -> None:
    with pytest.raises(ValueError, match="min_fixes"):
        DebouncePolicy(min_fixes=0)
    with pytest.raises(ValueError, match="margin_m"):
        DebouncePolicy(margin_m=-1)
    with pytest.raises(ValueError, match="duplicate"):
        FenceTracker([("a", SCHOOL), ("a", SCHOOL)])
    bow_tie = Polygon([(118.0, 24.4), (118.1, 24.5), (118.1, 24.4), (118.0, 24.5)])
    assert FenceTracker([("bow", bow_tie)]).fence_ids == ("bow",)  # repaired, like every fence
    assert FenceTracker([]).step({}, _fixes([INSIDE])) == ({DEV: TrackState(last_us=int(T0.timestamp()) * 10**6)}, [])
