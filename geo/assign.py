"""Assign points to district, grid cell and geofences.

:class:`Assigner` answers "where is this reading?" for one point
(:meth:`Assigner.assign`) or for a whole batch (:meth:`Assigner.assign_many`,
bulk STRtree queries; over a million points a second on one core). Both use the same
:class:`~geo.districts.DistrictIndex`, so they agree, including on shared
boundaries, where the lowest district code wins.

All coordinates are WGS84; convert GCJ-02 input first (see
:mod:`geo.coords`, or pass a :class:`~geo.coords.Location` to
:meth:`Assigner.assign_location`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from geo.coords import Location
from geo.districts import District, validate_fences
from geo.errors import GeoError
from geo.grid import Grid
from geo.spatial import as_lonlat_arrays, query_points

__all__ = ["Assigner", "Assignment", "BulkAssignment", "FenceHits"]


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where one point is.

    Attributes:
        district: The district containing it.
        grid_cell: Its 15-digit cell code.
        fences: Ids of the geofences containing it (boundary included), sorted.
    """

    district: District
    grid_cell: str
    fences: tuple[str, ...]


class BulkAssignment(NamedTuple):
    """Where many points are; unpacks as ``(district_codes, cell_codes, outside)``.

    Attributes:
        district_codes: 6-character district code per point, ``""`` if outside.
        cell_codes: 15-character cell code per point, ``""`` if outside.
        outside: True where the point is in no district (including NaN input).
    """

    district_codes: NDArray[np.str_]
    cell_codes: NDArray[np.str_]
    outside: NDArray[np.bool_]


class FenceHits(NamedTuple):
    """Point-in-geofence pairs, sorted by point then fence id.

    Attributes:
        point_index: Index of the point in the input arrays.
        fence_ids: Id of a fence containing it.
    """

    point_index: NDArray[np.intp]
    fence_ids: NDArray[np.str_]


class Assigner:
    """District, cell and geofence lookup over one city.

    Args:
        districts: The districts the grid was built from.
        grid: The city grid.
        fences: ``(fence_id, geometry)`` pairs; polygonal geometries in WGS84,
            validated (and repaired if invalid) like districts.

    Raises:
        GeoError: If ``grid`` was built from other districts.
        GeometryError: On a fence geometry that cannot be repaired.
        ValueError: On an empty or duplicate fence id.
    """

    def __init__(
        self,
        districts: Iterable[District],
        grid: Grid,
        fences: Iterable[tuple[str, BaseGeometry]] = (),
    ) -> None:
        if tuple(sorted(districts, key=lambda d: d.code)) != grid.districts:
            # Cell codes carry the district prefix; mixing two sets of
            # outlines would give codes whose pieces do not exist.
            raise GeoError("the grid was built from different districts than the ones given")
        self._grid = grid
        self._index = grid.index
        # District codes by index, plus a trailing "" so index -1 (outside)
        # maps to the empty code in assign_many.
        self._code_lookup = np.array([*(d.code for d in grid.districts), ""], dtype="<U6")
        ids, geometries = validate_fences(fences)
        self._fence_ids = np.array(ids, dtype=np.str_)
        self._fence_tree = shapely.STRtree(np.array(geometries, dtype=object))

    @property
    def grid(self) -> Grid:
        """The grid cell codes come from."""
        return self._grid

    @property
    def fence_ids(self) -> tuple[str, ...]:
        """Geofence ids in the order given."""
        return tuple(self._fence_ids.tolist())

    def assign(self, lon: float, lat: float) -> Assignment:
        """Assign one WGS84 point.

        Args:
            lon: Longitude, degrees.
            lat: Latitude, degrees.

        Returns:
            Its district, cell and geofences.

        Raises:
            CoordinateError: On a non-finite or out-of-range coordinate.
            OutsideCityError: If it is in no district; the message names the
                point, the nearest district and the distance to it.
        """
        Location(lon, lat)  # validates: finite, in range
        district = self._index.locate(lon, lat)
        if district is None:
            raise self._index.outside_error(lon, lat)
        return Assignment(district, self._grid.code_in(district.code, lon, lat), self.fences_of(lon, lat))

    def assign_location(self, location: Location) -> Assignment:
        """Assign a :class:`Location` in any CRS (converted to WGS84 first)."""
        wgs = location.to_wgs84()
        return self.assign(wgs.lon, wgs.lat)

    def fences_of(self, lon: float, lat: float) -> tuple[str, ...]:
        """Sorted ids of the geofences containing a WGS84 point (boundary included)."""
        hits = self._fence_tree.query(Point(lon, lat), predicate="intersects")
        return tuple(sorted(self._fence_ids[hits].tolist()))

    def assign_many(self, lons: ArrayLike, lats: ArrayLike) -> BulkAssignment:
        """Assign a batch of WGS84 points with bulk STRtree queries.

        Unlike :meth:`assign`, nothing raises per point: points in no district
        and points with NaN/infinite coordinates are flagged in ``outside``, so
        one bad row cannot fail a batch. Geofences: :meth:`fences_many`.

        Args:
            lons: 1-D longitudes.
            lats: 1-D latitudes, same length.

        Returns:
            ``(district_codes, cell_codes, outside)`` arrays, one entry per
            point; agrees with :meth:`assign` point by point.

        Raises:
            CoordinateError: If the arrays are not 1-D of equal length.
        """
        x, y = as_lonlat_arrays(lons, lats)
        district_index = self._index.locate_many(x, y)
        return BulkAssignment(
            district_codes=self._code_lookup[district_index],
            cell_codes=self._grid.cell_codes_for(district_index, x, y),
            outside=district_index < 0,
        )

    def fences_many(self, lons: ArrayLike, lats: ArrayLike) -> FenceHits:
        """Geofence membership of a batch of WGS84 points (bulk STRtree query).

        Args:
            lons: 1-D longitudes.
            lats: 1-D latitudes, same length.

        Returns:
            Every (point, fence) pair where the point intersects the fence,
            sorted by point index then fence id. Points in no fence, and
            non-finite points, do not appear.
        """
        point_idx, fence_idx = query_points(self._fence_tree, lons, lats)
        ids = self._fence_ids[fence_idx]
        order = np.lexsort((ids, point_idx))
        return FenceHits(point_idx[order], ids[order])
