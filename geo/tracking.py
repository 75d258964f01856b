"""Debounced geofence enter/leave events for devices that report their position. Pure.

A mobile sensor (a micro-station on a bus, a patrol car) reports ``lon``/``lat``
with its readings. Raw GPS jitters by 5-30 m in a street canyon, so a device
parked on a fence boundary would produce an enter/leave pair every few
seconds if membership followed each fix. :class:`FenceTracker` debounces it
three ways (:class:`DebouncePolicy`):

* **margin**: a fix within ``margin_m`` of a fence's boundary is ambiguous
  for that fence: it neither changes membership nor breaks a streak;
* **fixes**: membership changes only after ``min_fixes`` consecutive
  unambiguous fixes on the other side;
* **hold**: … spanning at least ``hold_s`` seconds of event time.

A change that is confirmed is dated at the *first* fix of its streak (when the
device actually crossed), so an event can be dated before the batch that
confirmed it. Fixes at or before the device's last applied fix are ignored,
so a replayed batch changes nothing and emits nothing.

Distances are computed in a local equirectangular frame in metres centred on
Xiamen (error < 0.5 % across the city), so the margin is a real distance in
every direction. Everything is in WGS84; convert GCJ-02 fixes first.

The state per device (:class:`TrackState`) is plain data with a JSON form,
stored by :meth:`geo.service.GeoService.track_many` in ``device_fences``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from geo.districts import validate_fences
from geo.fences import FenceEvent

__all__ = ["DebouncePolicy", "FenceTracker", "Fix", "Pending", "TrackState"]

# Metres per degree of latitude (mean); longitude degrees shrink by cos(lat).
_M_PER_DEG = 111_320.0
# Xiamen's latitude: the frame is exact here and within 0.5 % over the city.
_ORIGIN_LAT = 24.55

# Observation of one fix against one fence.
_IN, _OUT, _EDGE = 1, 0, -1


@dataclass(frozen=True, slots=True)
class DebouncePolicy:
    """How sure the tracker must be before membership changes.

    Attributes:
        margin_m: A fix closer than this to a fence's boundary is ambiguous
            for that fence. Typical consumer GPS is good to 5-10 m in the
            open; 15 m also absorbs most urban-canyon multipath.
        min_fixes: Consecutive unambiguous fixes needed on the other side.
        hold_s: Event time those fixes must span. With ``min_fixes=2`` a
            device reporting every 60 s confirms after one interval; one
            reporting every second needs 10 s.

    ``DebouncePolicy(0, 1, 0)`` follows every fix (no debouncing).
    """

    margin_m: float = 15.0
    min_fixes: int = 2
    hold_s: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin_m) and self.margin_m >= 0):
            raise ValueError(f"margin_m must be >= 0, got {self.margin_m!r}")
        if self.min_fixes < 1:
            raise ValueError(f"min_fixes must be >= 1, got {self.min_fixes!r}")
        if not (math.isfinite(self.hold_s) and self.hold_s >= 0):
            raise ValueError(f"hold_s must be >= 0, got {self.hold_s!r}")


@dataclass(frozen=True, slots=True)
class Pending:
    """A membership change seen but not yet confirmed.

    Attributes:
        kind: ``"enter"`` or ``"leave"``.
        since_us: Event time (µs since the epoch) of the first fix of the streak.
        fixes: Unambiguous fixes in the streak so far.
    """

    kind: Literal["enter", "leave"]
    since_us: int
    fixes: int


@dataclass(frozen=True, slots=True)
class TrackState:
    """Debounced fence membership of one device.

    Attributes:
        fences: Fence id → event time (µs) the device entered it; the
            confirmed membership.
        pending: Fence id → the change being confirmed.
        last_us: Event time (µs) of the last fix applied; 0 if none.
    """

    fences: Mapping[str, int] = field(default_factory=dict)
    pending: Mapping[str, Pending] = field(default_factory=dict)
    last_us: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in ``device_fences.state``."""
        return {
            "fences": dict(self.fences),
            "pending": {f: [p.kind, p.since_us, p.fixes] for f, p in self.pending.items()},
            "last_us": self.last_us,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> TrackState:
        """Inverse of :meth:`to_json`; None or ``{}`` is the empty state."""
        if not data:
            return cls()
        pending = {f: Pending(p[0], int(p[1]), int(p[2])) for f, p in (data.get("pending") or {}).items()}
        return cls(
            fences={f: int(t) for f, t in (data.get("fences") or {}).items()},
            pending=pending,
            last_us=int(data.get("last_us") or 0),
        )


class Fix(NamedTuple):
    """One reported position.

    Attributes:
        device_code: The device.
        lon: WGS84 longitude.
        lat: WGS84 latitude.
        at: Event time (timezone-aware).
    """

    device_code: str
    lon: float
    lat: float
    at: datetime


def _epoch_us(t: datetime) -> int:
    # Integer arithmetic: float seconds would round µs at today's epochs.
    delta = t - datetime(1970, 1, 1, tzinfo=t.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int, like: datetime) -> datetime:
    from datetime import timedelta

    return datetime(1970, 1, 1, tzinfo=like.tzinfo) + timedelta(microseconds=us)


class FenceTracker:
    """Debounced membership tracking over a fixed set of fences.

    Build one per fence revision (it projects and indexes the fences once)
    and call :meth:`step` with each batch of fixes.

    Args:
        fences: ``(fence_id, geometry)`` pairs, WGS84 polygons (validated and
            repaired like districts).
        policy: The debouncing policy.

    Raises:
        ValueError: On an empty or duplicate fence id.
        GeometryError: On a fence that cannot be repaired.
    """

    def __init__(self, fences: Iterable[tuple[str, BaseGeometry]], policy: DebouncePolicy | None = None) -> None:
        self.policy = policy or DebouncePolicy()
        ids, valid = validate_fences(fences)
        projected: list[BaseGeometry] = [shapely.transform(g, self._project_xy) for g in valid]
        self._ids = ids
        self._known = frozenset(ids)
        self._geoms = np.array(projected, dtype=object)
        self._boundaries = shapely.boundary(self._geoms) if ids else self._geoms
        shapely.prepare(self._geoms)
        self._tree = shapely.STRtree(self._geoms)

    @property
    def fence_ids(self) -> tuple[str, ...]:
        """The fences tracked, in the order given."""
        return tuple(self._ids)

    @staticmethod
    def _project_xy(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        kx = _M_PER_DEG * math.cos(math.radians(_ORIGIN_LAT))
        return xy * np.array([kx, _M_PER_DEG])

    def observe(
        self, lons: NDArray[np.float64], lats: NDArray[np.float64]
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int8]]:
        """Classify fixes against the fences near them (bulk STRtree query).

        Args:
            lons: WGS84 longitudes (finite).
            lats: WGS84 latitudes, same length.

        Returns:
            ``(fix_index, fence_index, observation)`` for every fix and every
            fence it is inside or within the margin of: observation is 1
            (inside, clear of the boundary), 0 (outside, clear) or -1 (within
            ``margin_m`` of the boundary). A fix absent for a fence is
            clearly outside it.
        """
        xy = self._project_xy(np.column_stack([lons, lats]))
        points = shapely.points(xy)
        margin = self.policy.margin_m
        if margin > 0:
            fix_idx, fence_idx = self._tree.query(points, predicate="dwithin", distance=margin)
        else:
            fix_idx, fence_idx = self._tree.query(points, predicate="intersects")
        if fix_idx.size == 0:
            return fix_idx, fence_idx, np.zeros(0, dtype=np.int8)
        # Boundary counts as inside, as in Assigner.fences_of.
        inside = shapely.intersects(self._geoms[fence_idx], points[fix_idx])
        obs = np.where(inside, _IN, _OUT).astype(np.int8)
        if margin > 0:
            near = shapely.distance(self._boundaries[fence_idx], points[fix_idx]) < margin
            obs[near] = _EDGE
        return fix_idx, fence_idx, obs

    def step(
        self, states: Mapping[str, TrackState], fixes: Sequence[Fix]
    ) -> tuple[dict[str, TrackState], list[FenceEvent]]:
        """Apply a batch of fixes: previous states + new positions → new states and events.

        Args:
            states: Device code → its state before the batch (missing: empty).
            fixes: Positions, any order, several per device allowed;
                non-finite ones are skipped.

        Returns:
            The new state of every device that had a fix (unchanged ones
            included, so a caller can store ``last_us``), and the events in
            device-code order, then in the order they were confirmed (at one
            fix: leaves before enters, each by fence id). A fence that no
            longer exists is left at the device's next fix.
        """
        usable = [f for f in fixes if math.isfinite(f.lon) and math.isfinite(f.lat)]
        usable.sort(key=lambda f: (f.device_code, _epoch_us(f.at)))
        observed: list[dict[str, int]] = [{} for _ in usable]
        if usable and self._ids:
            lons = np.fromiter((f.lon for f in usable), dtype=np.float64, count=len(usable))
            lats = np.fromiter((f.lat for f in usable), dtype=np.float64, count=len(usable))
            fix_idx, fence_idx, obs = self.observe(lons, lats)
            for i, j, o in zip(fix_idx.tolist(), fence_idx.tolist(), obs.tolist(), strict=True):
                observed[i][self._ids[j]] = o
        out: dict[str, TrackState] = {}
        events: list[FenceEvent] = []
        for fix, seen in zip(usable, observed, strict=True):
            state = out.get(fix.device_code) or states.get(fix.device_code) or TrackState()
            out[fix.device_code], new = self._apply(fix, seen, state)
            events += new
        return out, events

    def _apply(self, fix: Fix, seen: Mapping[str, int], state: TrackState) -> tuple[TrackState, list[FenceEvent]]:
        t_us = _epoch_us(fix.at)
        if t_us <= state.last_us:
            return state, []  # a replay, or a fix older than one already applied
        policy = self.policy
        hold_us = round(policy.hold_s * 1_000_000)
        fences = dict(state.fences)
        pending = dict(state.pending)
        leaves: list[FenceEvent] = []
        enters: list[FenceEvent] = []
        for fence_id in sorted(set(fences) | set(pending) | set(seen)):
            if fence_id not in self._known:
                # Deleted fence: leave it now, so an alert opened on entry is closed.
                pending.pop(fence_id, None)
                if fence_id in fences:
                    entered = fences.pop(fence_id)
                    leaves.append(FenceEvent(fix.device_code, fence_id, "leave", fix.at, _from_us(entered, fix.at)))
                continue
            o = seen.get(fence_id, _OUT)
            if o == _EDGE:
                continue  # ambiguous: neither confirms nor breaks a streak
            inside = o == _IN
            if inside == (fence_id in fences):
                pending.pop(fence_id, None)  # back on the confirmed side: the streak was jitter
                continue
            p = pending.get(fence_id) or Pending("enter" if inside else "leave", t_us, 0)
            p = Pending(p.kind, p.since_us, p.fixes + 1)
            if p.fixes >= policy.min_fixes and t_us - p.since_us >= hold_us:
                pending.pop(fence_id, None)
                at = _from_us(p.since_us, fix.at)
                if inside:
                    fences[fence_id] = p.since_us
                    enters.append(FenceEvent(fix.device_code, fence_id, "enter", at))
                else:
                    entered = fences.pop(fence_id)
                    leaves.append(FenceEvent(fix.device_code, fence_id, "leave", at, _from_us(entered, fix.at)))
            else:
                pending[fence_id] = p
        return TrackState(fences, pending, t_us), leaves + enters
