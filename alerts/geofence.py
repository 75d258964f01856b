"""Geofence membership for the rule engine, and fence events for the stream worker.

Rules can be scoped to fences (``scope: {fence: school-1}``, by id or name, or
``scope: {fence_kind: school_zone}``; see :mod:`alerts.rules`). The engine's
check must stay cheap: per device it is one dict lookup here
(:meth:`FenceMembership.keys`) and one ``frozenset.isdisjoint`` per rule.

* **Fixed devices** are in the fences that contain their registered location
  (``devices.lon/lat``, GCJ-02 converted). :class:`FenceMembership` computes
  that for every device at once with one bulk STRtree query; the sets are
  interned, so a city of devices in a handful of fence combinations costs a
  dict entry each.
* **Mobile devices** (any device whose readings carry ``lon`` and ``lat``
  metrics) are in the fences their debounced position is in
  (:mod:`geo.tracking`, stored in ``device_fences``); that overrides their
  registered location.

:class:`GeofenceHook` is what the stream worker holds: it refreshes the
membership when the fences change (``geofences_revision``, bumped by a
trigger on every change, checked at most every ``check_s``) or the ledger
does (``max(devices.updated_at)``, an index lookup), turns positions in a
batch into enter/leave events in the batch's transaction, and gives those
events as alert transitions (rule ``geofence.<fence id>``, severity info,
``labels.kind = "geofence"``): an enter opens the alert, the matching leave
clears it, on the documented ``citybrain.alerts`` topic through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from numpy.typing import ArrayLike
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from alerts.build import device_alert
from alerts.rules import fence_keys
from core.records import Alert, AlertState, Reading, Severity
from geo.coords import Crs, gcj02_to_wgs84
from geo.districts import validate_geometry
from geo.fences import FenceEvent
from geo.service import GeoService
from geo.spatial import query_points

if TYPE_CHECKING:
    from devices.index import DeviceInfo

__all__ = [
    "FENCE_RULE_PREFIX",
    "FenceMembership",
    "FenceRecord",
    "GeofenceHook",
    "fence_transitions",
    "positions_from_readings",
]

log = logging.getLogger(__name__)

# Alerts raised by fence events have rule "geofence.<fence id>" (one alert per
# device and fence stay, so two fences entered at once get two ids).
FENCE_RULE_PREFIX = "geofence."
_EMPTY: frozenset[str] = frozenset()
# GCJ-02 positions are up to ~700 m off in China; bbox prefilters look this much further.
_GCJ_MARGIN_DEG = 0.01


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """A stored geofence, as membership needs it.

    Attributes:
        id: Fence id.
        name: Display name (rules may name a fence by it).
        kind: ``school_zone``, ``water_source_protection``, ``flood_underpass`` or ``other``.
        geometry: WGS84 polygon.
    """

    id: str
    name: str
    kind: str
    geometry: BaseGeometry

    @property
    def keys(self) -> tuple[str, str, str]:
        """Membership keys of a device inside this fence (:func:`alerts.rules.fence_keys`)."""
        return fence_keys(self.id, self.name, self.kind)


class FenceMembership:
    """Which fences each device is in, as rule-scope keys.

    Args:
        fences: The fences.
        codes: Device codes of the fixed devices.
        lons: Their WGS84 longitudes (NaN: no location).
        lats: Their WGS84 latitudes.
    """

    def __init__(
        self,
        fences: Sequence[FenceRecord] = (),
        codes: Sequence[str] = (),
        lons: ArrayLike = (),
        lats: ArrayLike = (),
    ) -> None:
        self.fences: dict[str, FenceRecord] = {f.id: f for f in fences}
        self._ids: dict[str, frozenset[str]] = {}
        self._keys: dict[str, frozenset[str]] = {}
        # Interned key sets: devices in the same fences share one frozenset.
        self._interned: dict[frozenset[str], frozenset[str]] = {}
        if not fences or not len(codes):
            return
        geometries = np.array([validate_geometry(f.geometry, label=f"geofence {f.id!r}") for f in fences], dtype=object)
        tree = shapely.STRtree(geometries)
        point_idx, fence_idx = query_points(tree, lons, lats)
        order = np.argsort(point_idx, kind="stable")
        point_idx, fence_idx = point_idx[order], fence_idx[order]
        if point_idx.size == 0:
            return
        # Split the fence hits into one run per device.
        starts = np.flatnonzero(np.r_[True, point_idx[1:] != point_idx[:-1]])
        ends = np.r_[starts[1:], point_idx.size]
        ids = [f.id for f in fences]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            self.set_fences(codes[int(point_idx[s])], (ids[j] for j in fence_idx[s:e].tolist()))

    def keys(self, code: str) -> frozenset[str]:
        """The device's membership keys (empty if in no fence): the engine's hot path, one dict lookup."""
        return self._keys.get(code, _EMPTY)

    def fence_ids(self, code: str) -> frozenset[str]:
        """Ids of the fences the device is in."""
        return self._ids.get(code, _EMPTY)

    def set_fences(self, code: str, fence_ids: Iterable[str]) -> None:
        """Set a device's fences (e.g. a mobile device after tracking); unknown ids are ignored."""
        ids = frozenset(f for f in fence_ids if f in self.fences)
        if not ids:
            self._ids.pop(code, None)
            self._keys.pop(code, None)
            return
        keys = frozenset(k for f in ids for k in self.fences[f].keys)
        self._ids[code] = self._interned.setdefault(ids, ids)
        self._keys[code] = self._interned.setdefault(keys, keys)

    def __len__(self) -> int:
        """Devices in at least one fence."""
        return len(self._keys)


def positions_from_readings(
    readings: Iterable[Reading], *, lon_metric: str = "lon", lat_metric: str = "lat"
) -> list[tuple[str, float, float, datetime]]:
    """Positions in a batch: ``(device, lon, lat, event time)`` wherever both metrics share an event time.

    Readings of quality ``bad`` are not positions (a GPS without a fix often
    reports 0, 0). Values are WGS84 (a model declaring position metrics
    reports WGS84, as GNSS receivers do).
    """
    from core.records import Quality

    halves: dict[tuple[str, datetime], list[float | None]] = {}
    for r in readings:
        if r.metric not in (lon_metric, lat_metric) or r.quality is Quality.BAD:
            continue
        cell = halves.setdefault((r.device_code, r.event_time), [None, None])
        cell[0 if r.metric == lon_metric else 1] = r.value
    return [
        (code, lon, lat, at) for (code, at), (lon, lat) in sorted(halves.items()) if lon is not None and lat is not None
    ]


def fence_transitions(
    events: Sequence[FenceEvent], devices: Mapping[str, DeviceInfo], fences: Mapping[str, FenceRecord]
) -> list[tuple[str, Alert]]:
    """Alert transitions for fence events: enter opens ``geofence.<id>``, leave clears it.

    The alert id comes from (device, rule, entry time), so the leave finds
    the alert its enter opened, and a replay upserts the same rows. A leave
    whose entry time is unknown (a fence entered before debounced tracking
    was deployed) is skipped: there is no alert to clear.

    Args:
        events: From :meth:`geo.service.GeoService.track_many`.
        devices: Ledger info of the devices (district, class).
        fences: Fence records by id (name and kind for the message and labels).
    """
    out: list[tuple[str, Alert]] = []
    for ev in events:
        dev = devices.get(ev.device_code)
        if dev is None:
            continue
        fence = fences.get(ev.fence_id)
        name = fence.name if fence else ev.fence_id
        labels = (("kind", "geofence"), ("fence", ev.fence_id), ("fence_kind", fence.kind if fence else "other"))
        rule = FENCE_RULE_PREFIX + ev.fence_id
        if ev.kind == "enter":
            opened, state, cleared, verb = ev.at, AlertState.OPEN, None, "entered"
        else:
            if ev.entered_at is None or ev.entered_at.timestamp() <= 0:
                continue
            opened, state, cleared, verb = ev.entered_at, AlertState.RESOLVED, ev.at, "left"
        opened_utc = opened.astimezone(UTC)
        alert = device_alert(
            rule,
            ev.device_code,
            dev.district,
            dev.device_class,
            Severity.INFO,
            opened_utc,
            state=state,
            message=f"{verb} geofence {name} ({ev.fence_id})",
            cleared_at=cleared.astimezone(UTC) if cleared else None,
            labels=labels,
        )
        out.append(("open" if ev.kind == "enter" else "clear", alert))
    return out


class GeofenceHook:
    """Geofences for the stream worker: membership keys for rules, events for mobile devices.

    Typical use in :class:`streams.pipeline.Pipeline`::

        transitions += await hook.track(conn, readings)        # in the rules transaction; refreshes too
        ctx = DeviceContext(..., fences=tuple(hook.keys(code)))  # per device: one dict lookup

    Args:
        pool: The worker's (opened) pool.
        geo: The geo service whose fences and tracker are used (default: a
            new one on ``pool``).
        check_s: How often, at most, fence and ledger changes are checked.
        lon_metric: Metric carrying a mobile device's longitude.
        lat_metric: Metric carrying its latitude.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        geo: GeoService | None = None,
        check_s: float = 5.0,
        lon_metric: str = "lon",
        lat_metric: str = "lat",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._geo = geo or GeoService(pool, fence_check_s=check_s)
        self._check_s = check_s
        self._lon, self._lat = lon_metric, lat_metric
        self._clock = clock
        self._checked = float("-inf")
        self._signature: tuple[Any, ...] | None = None
        self._lock = asyncio.Lock()
        self.membership = FenceMembership()

    def keys(self, code: str) -> frozenset[str]:
        """Membership keys of a device, for :class:`alerts.engine.DeviceContext` ``fences``."""
        return self.membership.keys(code)

    async def refresh(self, force: bool = False, *, conn: AsyncConnection[Any] | None = None) -> bool:
        """Reload membership if fences or the ledger changed; checked at most every ``check_s``.

        Args:
            force: Check now and reload whatever the signature says.
            conn: Run the (read-only) queries on this connection, e.g. the
                caller's transaction; default one from the pool.

        Returns:
            Whether it reloaded.
        """
        now = self._clock()
        if not force and now - self._checked < self._check_s:
            return False
        async with self._lock:
            self._checked = now
            if conn is not None:
                return await self._refresh(conn, force)
            async with self._pool.connection() as own:
                return await self._refresh(own, force)

    async def _refresh(self, conn: AsyncConnection[Any], force: bool) -> bool:
        row = await (
            await conn.execute(
                "select (select revision from geofences_revision), (select max(updated_at) from devices),"
                " (select count(*) from geofences)"
            )
        ).fetchone()
        signature = tuple(row) if row else None
        if not force and signature == self._signature:
            return False
        membership = await self._load(conn)
        self.membership = membership
        self._signature = signature
        log.info(
            "geofence membership: %d fences, %d devices inside at least one", len(membership.fences), len(membership)
        )
        return True

    async def _load(self, conn: AsyncConnection[Any]) -> FenceMembership:
        rows = await (await conn.execute("select id, name, kind, geometry from geofences order by id")).fetchall()
        fences = [FenceRecord(r[0], r[1], r[2], shape(r[3])) for r in rows]
        if not fences:
            return FenceMembership()
        # Only devices near a fence can be in one: one round trip, one GiST-indexed
        # box probe per fence (the index's predicate needs the not-null tests).
        boxes = [
            f"(({x0 - _GCJ_MARGIN_DEG},{y0 - _GCJ_MARGIN_DEG}),({x1 + _GCJ_MARGIN_DEG},{y1 + _GCJ_MARGIN_DEG}))"
            for x0, y0, x1, y1 in (f.geometry.bounds for f in fences)
        ]
        found = await (
            await conn.execute(
                "select distinct on (d.code) d.code, d.lon, d.lat, d.crs"
                " from unnest(%s::text[]) as b(t)"
                " join devices d on point(d.lon, d.lat) <@ b.t::box"
                " where d.state <> 'decommissioned' and d.lon is not null and d.lat is not null"
                " order by d.code",
                (boxes,),
            )
        ).fetchall()
        seen = {str(code): (float(lon), float(lat), str(crs)) for code, lon, lat, crs in found}
        tracked = await (await conn.execute("select device_code, fences from device_fences")).fetchall()
        return await asyncio.to_thread(_build_membership, fences, seen, [(str(c), list(f)) for c, f in tracked])

    async def track(
        self, conn: AsyncConnection[Any], readings: Sequence[tuple[Reading, DeviceInfo]]
    ) -> list[tuple[str, Alert]]:
        """Apply the positions in a batch; return fence alert transitions (in ``conn``'s transaction).

        Refreshes the membership first (:meth:`refresh`, on ``conn``), so a
        worker only has to call this once per batch before evaluating rules.
        Devices with a position get their debounced membership updated here
        too, so rules evaluated after this call in the same batch see it.

        Args:
            conn: A connection inside the rules transaction.
            readings: The batch's ``(reading, device)`` pairs.

        Returns:
            ``(kind, alert)`` transitions for :meth:`alerts.store.AlertStore.apply`.
        """
        await self.refresh(conn=conn)
        positions = positions_from_readings((r for r, _ in readings), lon_metric=self._lon, lat_metric=self._lat)
        if not positions:
            return []
        states, events = await self._geo.track_states(conn, positions)
        membership = self.membership
        for code, state in states.items():
            membership.set_fences(code, state.fences)
        devices = {r.device_code: dev for r, dev in readings}
        return fence_transitions(events, devices, membership.fences)


def _build_membership(
    fences: Sequence[FenceRecord],
    fixed: Mapping[str, tuple[float, float, str]],
    tracked: Sequence[tuple[str, list[str]]],
) -> FenceMembership:
    codes = sorted(fixed)
    lons = np.array([fixed[c][0] for c in codes], dtype=np.float64)
    lats = np.array([fixed[c][1] for c in codes], dtype=np.float64)
    gcj = np.array([fixed[c][2] == Crs.GCJ02.value for c in codes], dtype=np.bool_)
    if gcj.any():
        lons[gcj], lats[gcj] = gcj02_to_wgs84(lons[gcj], lats[gcj])
    membership = FenceMembership(fences, codes, lons, lats)
    for code, ids in tracked:
        # A tracked (mobile) device is where its debounced position is, not where it was registered.
        membership.set_fences(code, ids)
    return membership
