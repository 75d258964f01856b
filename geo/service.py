"""The geo service: the pure spatial layer wired to PostgreSQL.

:class:`GeoService` holds, per process,

* the districts and grid (package data, built once on first use, ~60 ms);
* an :class:`~geo.assign.Assigner` over the geofences stored in
  ``geofences`` — rebuilt when the table's revision (bumped by a trigger on
  every change, see ``citybrain/sql/0500_geofences.sql``) differs from the one
  it was built from, checked at most every ``fence_check_s`` — so a fence
  created through any API replica is used by all of them within seconds;
* device positions per device class as numpy arrays (WGS84, plus the
  published position of sensitive devices), reloaded after ``points_ttl_s``.

Nothing is read in the constructor; the first call that needs data loads it.
All CPU-heavy work (grid build, GCJ-02 conversion of many points, STRtree
builds) runs in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from geo.assign import Assigner, Assignment
from geo.coords import Crs, Location, gcj02_to_wgs84
from geo.districts import District, load_districts
from geo.errors import FenceExistsError, FenceNotFoundError, GeometryError
from geo.fences import FenceEvent, FenceKind, ValidFence
from geo.grid import Grid
from geo.spatial import k_nearest, points_in_bbox, points_in_polygon
from geo.tracking import DebouncePolicy, FenceTracker, Fix, TrackState

__all__ = ["DevicePoints", "GeoService", "Nearest", "coarsen_many", "is_sensitive_code"]

FloatArray = NDArray[np.float64]

# Characters 7-10 of a city device code are its 4-digit facility class.
_CLASS_SLICE = slice(6, 10)


def is_sensitive_code(code: str, sensitive_classes: frozenset[str]) -> bool:
    """Whether a device's location must be coarsened (by the class in its code)."""
    return code[_CLASS_SLICE] in sensitive_classes


def coarsen_many(grid: Grid, lons: FloatArray, lats: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vectorised :func:`geo.grid.coarsen_to_cell` that never raises.

    Points in a district get their cell piece's label point. Points outside
    every district (a cover on a pier, a bad survey) still must not leak:
    they get the centre of their regular cell, or — outside the grid frame —
    their position rounded to 0.01°.

    Args:
        grid: The city grid.
        lons: WGS84 longitudes.
        lats: WGS84 latitudes.

    Returns:
        Coarsened ``(lons, lats)``.
    """
    out_x = np.round(lons, 2)
    out_y = np.round(lats, 2)
    if lons.size == 0:
        return out_x, out_y
    assigner_codes = grid.cell_codes_for(grid.index.locate_many(lons, lats), lons, lats)
    spec = grid.spec
    cols, rows = spec.indices(lons, lats)
    for i, code in enumerate(assigner_codes.tolist()):
        if code:
            out_x[i], out_y[i] = grid.label_point(code)
        elif cols[i] >= 0:
            west, south, east, north = spec.cell_bounds(int(cols[i]), int(rows[i]))
            out_x[i], out_y[i] = (west + east) / 2.0, (south + north) / 2.0
    return out_x, out_y


@dataclass(frozen=True, slots=True)
class DevicePoints:
    """Positions of the devices of one class (not decommissioned, with a location).

    Attributes:
        codes: Device codes, sorted.
        districts: Registered district per device.
        lons: True WGS84 longitudes.
        lats: True WGS84 latitudes.
        shown_lons: Published longitudes: the grid-cell label point for
            sensitive devices, the true longitude otherwise.
        shown_lats: Published latitudes, likewise.
        sensitive: True where the position is coarsened when published.
    """

    codes: NDArray[np.str_]
    districts: NDArray[np.str_]
    lons: FloatArray
    lats: FloatArray
    shown_lons: FloatArray
    shown_lats: FloatArray
    sensitive: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.codes.size)

    def positions(self, precise: bool) -> tuple[FloatArray, FloatArray]:
        """True positions if ``precise``, else the published ones."""
        return (self.lons, self.lats) if precise else (self.shown_lons, self.shown_lats)


@dataclass(frozen=True, slots=True)
class Nearest:
    """One answer of :meth:`GeoService.nearest`.

    Attributes:
        code: Device code.
        district: Its registered district.
        lon: Position returned (coarsened unless precise).
        lat: Position returned.
        distance_m: Great-circle distance from the query point to ``(lon, lat)``.
        masked: Whether the position is coarsened.
    """

    code: str
    district: str
    lon: float
    lat: float
    distance_m: float
    masked: bool


@dataclass(frozen=True, slots=True)
class _Fences:
    assigner: Assigner
    revision: int
    checked_at: float
    # The fences the assigner was built from, for a tracker built on first use.
    fences: tuple[tuple[str, BaseGeometry], ...] = ()


class GeoService:
    """Districts, grid, geofences and device positions for one process.

    Args:
        pool: An (opened) async connection pool.
        sensitive_classes: 4-digit facility classes whose locations are
            published at grid-cell resolution (e.g. gas and power manholes).
        cell_deg: Grid cell size (see :class:`~geo.grid.GridSpec`).
        fence_check_s: How often, at most, the fence revision is checked.
        points_ttl_s: How long a class's device positions are reused.
        clock: Monotonic clock, injectable for tests.
        districts_loader: Returns the districts; default the shipped data.
        fence_policy: Debouncing of mobile devices' fence enter/leave
            (:meth:`track_many`); default :class:`~geo.tracking.DebouncePolicy`.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        sensitive_classes: Iterable[str] = (),
        cell_deg: float = 0.01,
        fence_check_s: float = 5.0,
        points_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        districts_loader: Callable[[], tuple[District, ...]] = load_districts,
        fence_policy: DebouncePolicy | None = None,
    ) -> None:
        self._pool = pool
        self._fence_policy = fence_policy or DebouncePolicy()
        self._tracker: tuple[int, FenceTracker] | None = None
        self._sensitive = frozenset(sensitive_classes)
        self._cell_deg = cell_deg
        self._fence_check_s = fence_check_s
        self._points_ttl_s = points_ttl_s
        self._clock = clock
        self._districts_loader = districts_loader
        self._grid: Grid | None = None
        self._fences: _Fences | None = None
        self._points: dict[str, tuple[float, DevicePoints]] = {}
        self._lock = asyncio.Lock()
        self._points_locks: dict[str, asyncio.Lock] = {}

    # -- static layers --------------------------------------------------------------

    async def grid(self) -> Grid:
        """The city grid (districts included), built on first use."""
        if self._grid is None:
            async with self._lock:
                if self._grid is None:
                    loader, cell = self._districts_loader, self._cell_deg
                    self._grid = await asyncio.to_thread(lambda: Grid.build(loader(), cell_deg=cell))
        return self._grid

    async def districts(self) -> tuple[District, ...]:
        """The districts, sorted by code."""
        return (await self.grid()).districts

    def is_sensitive(self, code: str) -> bool:
        """Whether this device's location is coarsened when published."""
        return is_sensitive_code(code, self._sensitive)

    # -- fences -----------------------------------------------------------------------

    async def assigner(self) -> Assigner:
        """An assigner over the current geofences, rebuilt when they changed."""
        grid = await self.grid()
        current = self._fences
        now = self._clock()
        if current is not None and now - current.checked_at < self._fence_check_s:
            return current.assigner
        async with self._pool.connection() as conn:
            row = await (await conn.execute("select revision from geofences_revision")).fetchone()
            revision = int(row[0]) if row else 0
            if current is not None and current.revision == revision:
                self._fences = _Fences(current.assigner, revision, now, current.fences)
                return current.assigner
            # One statement, so revision and rows come from the same snapshot.
            rows = await (
                await conn.execute(
                    "select r.revision, f.id, f.geometry from geofences_revision r"
                    " left join geofences f on true order by f.id"
                )
            ).fetchall()
        revision = int(rows[0][0]) if rows else 0
        rows = [(fid, geometry) for _, fid, geometry in rows if fid is not None]
        fences = [(fid, shape(geometry)) for fid, geometry in rows]
        assigner = await asyncio.to_thread(Assigner, grid.districts, grid, fences)
        self._fences = _Fences(assigner, revision, now, tuple(fences))
        return assigner

    async def tracker(self) -> FenceTracker:
        """A debounced fence tracker over the current geofences (rebuilt with the assigner)."""
        await self.assigner()
        current = self._fences
        assert current is not None  # assigner() sets it
        if self._tracker is None or self._tracker[0] != current.revision:
            tracker = await asyncio.to_thread(FenceTracker, current.fences, self._fence_policy)
            self._tracker = (current.revision, tracker)
        return self._tracker[1]

    def invalidate_fences(self) -> None:
        """Force the next :meth:`assigner` call to check the revision (after a local change)."""
        if self._fences is not None:
            f = self._fences
            self._fences = _Fences(f.assigner, f.revision, float("-inf"), f.fences)

    async def check_inside_city(self, fence: ValidFence) -> None:
        """Refuse a fence that lies outside every district.

        Raises:
            GeometryError: Naming the fence and its bounding box.
        """
        grid = await self.grid()
        hits, _ = grid.index.query_intersecting(np.array([fence.geometry], dtype=object))
        if hits.size == 0:
            raise GeometryError(
                f"fence {fence.draft.id}: lies outside every district (bbox {fence.bbox}); "
                "is it in GCJ-02 but sent as WGS84, or lat/lon swapped?"
            )

    async def create_fences(self, fences: Sequence[ValidFence], *, created_by: str, replace: bool = False) -> None:
        """Store validated fences in one transaction.

        Args:
            fences: Validated fences (unique ids).
            created_by: Who is creating them.
            replace: Overwrite fences with the same id instead of failing.

        Raises:
            GeometryError: If a fence lies outside the city.
            FenceExistsError: If an id exists and ``replace`` is False.
        """
        for fence in fences:
            await self.check_inside_city(fence)
        conflict = (
            "on conflict (id) do update set name = excluded.name, kind = excluded.kind, geometry = excluded.geometry,"
            " crs = excluded.crs, min_lon = excluded.min_lon, min_lat = excluded.min_lat, max_lon = excluded.max_lon,"
            " max_lat = excluded.max_lat, created_at = now(), created_by = excluded.created_by"
            if replace
            else "on conflict (id) do nothing"
        )
        rows = [
            (
                f.draft.id,
                f.draft.name.strip(),
                f.draft.kind.value,
                Jsonb(f.geojson),
                f.draft.crs.value,
                *f.bbox,
                created_by,
            )
            for f in fences
        ]
        async with self._pool.connection() as conn, conn.transaction():
            for row in rows:
                cur = await conn.execute(
                    "insert into geofences (id, name, kind, geometry, crs, min_lon, min_lat, max_lon, max_lat,"
                    " created_by) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) " + conflict + " returning id",
                    row,
                )
                if await cur.fetchone() is None:
                    # Raising rolls the whole batch back: an import is all or nothing.
                    raise FenceExistsError(f"fence {row[0]!r} already exists; delete it first or import with replace")
        self.invalidate_fences()

    async def list_fences(
        self, *, kind: FenceKind | None = None, bbox: tuple[float, float, float, float] | None = None
    ) -> list[dict[str, Any]]:
        """Stored fences as dicts (``geometry`` is GeoJSON), by id.

        Args:
            kind: Only fences of this kind.
            bbox: Only fences whose bounding box intersects this
                ``(min_lon, min_lat, max_lon, max_lat)`` (a prefilter; exact
                for the map's purpose of "what to draw here").
        """
        where = ["true"]
        params: dict[str, Any] = {}
        if kind is not None:
            where.append("kind = %(kind)s")
            params["kind"] = kind.value
        if bbox is not None:
            where.append("max_lon >= %(x0)s and min_lon <= %(x1)s and max_lat >= %(y0)s and min_lat <= %(y1)s")
            params.update(x0=bbox[0], y0=bbox[1], x1=bbox[2], y1=bbox[3])
        query = (
            "select id, name, kind, geometry, crs, created_at, created_by from geofences where "
            + " and ".join(where)
            + " order by id"
        )
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(query.encode(), params)).fetchall()
        return [_fence_dict(r) for r in rows]

    async def get_fence(self, fence_id: str) -> dict[str, Any]:
        """One stored fence.

        Raises:
            FenceNotFoundError: If there is none with this id.
        """
        async with self._pool.connection() as conn:
            row = await (
                await conn.execute(
                    "select id, name, kind, geometry, crs, created_at, created_by from geofences where id = %s",
                    (fence_id,),
                )
            ).fetchone()
        if row is None:
            raise FenceNotFoundError(f"no geofence {fence_id!r}")
        return _fence_dict(row)

    async def delete_fence(self, fence_id: str) -> None:
        """Delete a fence; memberships naming it are dropped at each device's next position.

        Raises:
            FenceNotFoundError: If there is none with this id.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute("delete from geofences where id = %s", (fence_id,))
            if cur.rowcount == 0:
                raise FenceNotFoundError(f"no geofence {fence_id!r}")
        self.invalidate_fences()

    # -- assignment ---------------------------------------------------------------

    async def assign(self, lon: float, lat: float, crs: Crs = Crs.WGS84) -> Assignment:
        """District, cell and fences of a point.

        Raises:
            CoordinateError: On a bad coordinate.
            OutsideCityError: If the point is in no district (the message
                names the nearest district and the distance to it).
        """
        assigner = await self.assigner()
        return assigner.assign_location(Location(lon, lat, crs))

    async def track_many(
        self, conn: AsyncConnection[Any], positions: Sequence[tuple[str, float, float, datetime]]
    ) -> list[FenceEvent]:
        """Update the debounced fence membership of mobile devices; return enter/leave events.

        Every position is applied in event-time order per device through
        :class:`~geo.tracking.FenceTracker` (GPS jitter on a boundary does
        not flap; see :class:`~geo.tracking.DebouncePolicy`). Runs in the
        caller's transaction (e.g. the stream worker's batch), so membership
        and whatever the caller does with the events commit together. Rows
        are locked in code order, so concurrent batches cannot deadlock each
        other; positions at or before a device's last applied one are
        ignored, so a replayed batch emits nothing.

        Args:
            conn: A connection, inside a transaction.
            positions: ``(device_code, lon, lat, event_time)`` in WGS84.

        Returns:
            Events, grouped by device in code order.
        """
        return (await self.track_states(conn, positions))[1]

    async def track_states(
        self, conn: AsyncConnection[Any], positions: Sequence[tuple[str, float, float, datetime]]
    ) -> tuple[dict[str, TrackState], list[FenceEvent]]:
        """:meth:`track_many`, also returning each tracked device's new state (its confirmed fences)."""
        fixes = [Fix(code, float(lon), float(lat), at) for code, lon, lat, at in positions]
        if not fixes:
            return {}, []
        tracker = await self.tracker()
        codes = sorted({f.device_code for f in fixes})
        rows = await (
            await conn.execute(
                "select device_code, fences, state from device_fences where device_code = any(%s)"
                " order by device_code for update",
                (codes,),
            )
        ).fetchall()
        before = {str(code): _track_state(fences, state) for code, fences, state in rows}
        after, events = tracker.step(before, fixes)
        changed = [
            (code, sorted(st.fences), Jsonb(st.to_json()))
            for code, st in sorted(after.items())
            if st != before.get(code)
        ]
        if changed:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "insert into device_fences (device_code, fences, state) values (%s, %s, %s)"
                    " on conflict (device_code) do update set fences = excluded.fences, state = excluded.state,"
                    " updated_at = now()",
                    changed,
                )
        return after, events

    # -- device positions ------------------------------------------------------------

    async def points(self, device_class: str) -> DevicePoints:
        """Positions of a class's devices, cached for ``points_ttl_s``."""
        cached = self._points.get(device_class)
        if cached is not None and self._clock() - cached[0] < self._points_ttl_s:
            return cached[1]
        lock = self._points_locks.setdefault(device_class, asyncio.Lock())
        async with lock:
            cached = self._points.get(device_class)
            if cached is not None and self._clock() - cached[0] < self._points_ttl_s:
                return cached[1]
            grid = await self.grid()
            async with self._pool.connection() as conn:
                rows = await (
                    await conn.execute(
                        "select code, district, lon, lat, crs from devices where device_class = %s"
                        " and state <> 'decommissioned' and lon is not null and lat is not null order by code",
                        (device_class,),
                    )
                ).fetchall()
            points = await asyncio.to_thread(self._build_points, grid, rows)
            self._points[device_class] = (self._clock(), points)
            return points

    def invalidate_points(self, device_class: str | None = None) -> None:
        """Drop cached positions (of one class, or all), e.g. after a device moved."""
        if device_class is None:
            self._points.clear()
        else:
            self._points.pop(device_class, None)

    def _build_points(self, grid: Grid, rows: Sequence[tuple[Any, ...]]) -> DevicePoints:
        codes = np.array([r[0] for r in rows], dtype=np.str_)
        districts = np.array([r[1] for r in rows], dtype=np.str_)
        lons = np.array([r[2] for r in rows], dtype=np.float64)
        lats = np.array([r[3] for r in rows], dtype=np.float64)
        gcj = np.array([r[4] == Crs.GCJ02.value for r in rows], dtype=np.bool_)
        if gcj.any():
            lons[gcj], lats[gcj] = gcj02_to_wgs84(lons[gcj], lats[gcj])
        sensitive = np.array([is_sensitive_code(str(c), self._sensitive) for c in codes.tolist()], dtype=np.bool_)
        shown_lons, shown_lats = lons.copy(), lats.copy()
        if sensitive.any():
            shown_lons[sensitive], shown_lats[sensitive] = coarsen_many(grid, lons[sensitive], lats[sensitive])
        return DevicePoints(codes, districts, lons, lats, shown_lons, shown_lats, sensitive)

    async def nearest(
        self, lon: float, lat: float, device_class: str, k: int, *, precise: bool = False
    ) -> list[Nearest]:
        """The ``k`` devices of a class nearest to a WGS84 point.

        Without ``precise``, distances are to the *published* positions, so
        that the answers cannot be used to trilaterate a sensitive device.
        """
        Location(lon, lat)
        pts = await self.points(device_class)
        xs, ys = pts.positions(precise)
        idx, dist = k_nearest(xs, ys, lon, lat, k)
        return [
            Nearest(
                code=str(pts.codes[i]),
                district=str(pts.districts[i]),
                lon=float(xs[i]),
                lat=float(ys[i]),
                distance_m=float(d),
                masked=bool(pts.sensitive[i]) and not precise,
            )
            for i, d in zip(idx.tolist(), dist.tolist(), strict=True)
        ]

    async def within(
        self,
        device_class: str,
        *,
        bbox: tuple[float, float, float, float] | None = None,
        polygon: BaseGeometry | None = None,
        precise: bool = False,
    ) -> list[str]:
        """Codes of a class's devices inside a WGS84 bbox and/or polygon (by published position unless precise)."""
        pts = await self.points(device_class)
        xs, ys = pts.positions(precise)
        mask = np.ones(len(pts), dtype=np.bool_)
        if bbox is not None:
            mask &= points_in_bbox(xs, ys, bbox)
        if polygon is not None:
            mask &= points_in_polygon(xs, ys, polygon)
        return [str(c) for c in pts.codes[mask].tolist()]

    async def display_points(
        self, rows: Sequence[tuple[str, float, float, str]], *, precise: bool
    ) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
        """WGS84 published positions of ``(code, lon, lat, crs)`` rows and a masked flag per row."""
        grid = await self.grid()
        lons = np.array([r[1] for r in rows], dtype=np.float64)
        lats = np.array([r[2] for r in rows], dtype=np.float64)
        gcj = np.array([r[3] == Crs.GCJ02.value for r in rows], dtype=np.bool_)
        if gcj.any():
            lons[gcj], lats[gcj] = gcj02_to_wgs84(lons[gcj], lats[gcj])
        masked = np.array([not precise and self.is_sensitive(r[0]) for r in rows], dtype=np.bool_)
        if masked.any():
            lons[masked], lats[masked] = coarsen_many(grid, lons[masked], lats[masked])
        return lons, lats, masked


def _track_state(fences: Sequence[str], state: dict[str, Any] | None) -> TrackState:
    """A stored tracking state; a row written before the state column keeps its fences (entry time unknown: 0)."""
    if state:
        return TrackState.from_json(state)
    return TrackState(fences=dict.fromkeys(fences, 0))


def _fence_dict(row: Sequence[Any]) -> dict[str, Any]:
    fid, name, kind, geometry, crs, created_at, created_by = row
    if isinstance(geometry, str | bytes):  # a text-typed driver row; jsonb normally arrives parsed
        geometry = json.loads(geometry)
    return {
        "id": fid,
        "name": name,
        "kind": kind,
        "geometry": geometry,
        "crs": crs,
        "created_at": created_at.isoformat(),
        "created_by": created_by,
    }
